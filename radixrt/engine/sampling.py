"""Sampling parameters (validated) and the sampler that turns logits into next tokens."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # matched on the decoded text; the stop string is not returned
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False  # log-probability of each chosen token
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys end up here, to be refused

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming the first impossible parameter."""
        problems = []
        if self.extra:
            problems.append(f"unknown sampling parameter(s): {', '.join(sorted(self.extra))}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not _finite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0 is off), got {self.top_k!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _finite(self.min_p) or not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {self.min_p!r}")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                problems.append(f"{name} must be in [-2, 2], got {value!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append("stop must be non-empty strings")
        bad = [t for t in self.stop_token_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            problems.append(f"stop_token_ids {bad[:4]} are outside the vocabulary (0..{vocab_size - 1})")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Build from a plain dict (a wire message); unknown keys are kept so ``validate`` names them."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "extra"}
        for key in ("stop", "stop_token_ids"):
            if isinstance(known.get(key), (list, str)):
                known[key] = (known[key],) if isinstance(known[key], str) else tuple(known[key])
        return cls(**known, extra={k: v for k, v in values.items() if k not in known})


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``seen``: token ids generated or in the prompt (repetition); ``counts``: per-token counts of
    generated tokens (frequency, presence), as in OpenAI's and vLLM's definitions."""
    if params.repetition_penalty != 1.0 and seen.numel():
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.frequency_penalty or params.presence_penalty:
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> tuple[int, float]:
    """One token from float32 ``logits [vocab]`` (already penalised): the token and its log-probability
    under the distribution it was drawn from (the model's, for greedy)."""
    if params.temperature == 0:
        token = int(logits.argmax())
        return token, float(torch.log_softmax(logits, -1)[token])
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, -1)
    if params.min_p:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(0, order[outside], 0.0)
    probs = probs / probs.sum()
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(torch.log(probs[token]))
