"""How ``select`` picks among choices from each choice's token log-probabilities after the prompt
(SGLang's three methods, under their names). Token entries are ``(logprob, token_id, text)``
tuples, as SGLang's meta info has them, so programs that read them work unchanged."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

TokenLogprobs = list[tuple[float, int, str | None]]


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] | None = None


class ChoicesSamplingMethod(ABC):
    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    @abstractmethod
    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[TokenLogprobs],
        output_token_logprobs: list[TokenLogprobs],
        unconditional_token_logprobs: list[TokenLogprobs] | None = None,
    ) -> ChoicesDecision: ...


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The highest mean log-probability per token (the default)."""

    def __call__(
        self,
        *,
        choices,
        normalized_prompt_logprobs,
        input_token_logprobs,
        output_token_logprobs,
        unconditional_token_logprobs=None,
    ) -> ChoicesDecision:
        best = int(np.argmax(normalized_prompt_logprobs))
        return ChoicesDecision(
            choices[best],
            {
                "normalized_prompt_logprobs": normalized_prompt_logprobs,
                "input_token_logprobs": input_token_logprobs,
                "output_token_logprobs": output_token_logprobs,
            },
        )


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Token by token: keep the choices whose token at position j is the most likely, until one is
    left; a shorter choice is padded with its own mean log-probability."""

    def __call__(
        self,
        *,
        choices,
        normalized_prompt_logprobs,
        input_token_logprobs,
        output_token_logprobs,
        unconditional_token_logprobs=None,
    ) -> ChoicesDecision:
        width = max(len(option) for option in input_token_logprobs)
        matrix = np.zeros((len(choices), width))
        for i, option in enumerate(input_token_logprobs):
            values = [t[0] for t in option]
            matrix[i, : len(values)] = values
            matrix[i, len(values) :] = np.mean(values)
        remaining = np.arange(len(choices))
        for j in range(width):
            column = matrix[remaining, j]
            remaining = remaining[column == column.max()]
            if len(remaining) == 1:
                break
        return ChoicesDecision(
            choices[int(remaining[0])],
            {
                "normalized_prompt_logprobs": normalized_prompt_logprobs,
                "input_token_logprobs": input_token_logprobs,
                "output_token_logprobs": output_token_logprobs,
                "greedy_logprob_matrix": matrix.tolist(),
            },
        )


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The highest mean of (log-probability after the prompt - log-probability with no context),
    which discounts choices that are likely anywhere."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(
        self,
        *,
        choices,
        normalized_prompt_logprobs,
        input_token_logprobs,
        output_token_logprobs,
        unconditional_token_logprobs=None,
    ) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("Unconditional token logprobs are required for this method.")
        scores = [
            float(np.mean([t[0] for t in given]) - np.mean([t[0] for t in alone]))
            for given, alone in zip(input_token_logprobs, unconditional_token_logprobs)
        ]
        return ChoicesDecision(
            choices[int(np.argmax(scores))],
            {
                "normalized_prompt_logprobs": normalized_prompt_logprobs,
                "input_token_logprobs": input_token_logprobs,
                "output_token_logprobs": output_token_logprobs,
                "unconditional_token_logprobs": unconditional_token_logprobs,
                "normalized_unconditional_prompt_logprobs": scores,
            },
        )


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
