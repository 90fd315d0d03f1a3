"""Sampling parameters (validated) and the batch sampler that turns a step's logits into next tokens.

``sample_batch`` runs on the logits' device for the whole batch and never synchronises with the host:
the caller copies tokens and log-probabilities back once per step.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["GREEDY_EPS", "SamplingParams", "sample_batch"]

GREEDY_EPS = 1e-5
"""Temperatures below this are greedy: dividing logits by them overflows (as in SGLang)."""

TokenIds = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # below GREEDY_EPS (0 included) = greedy
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

    def __post_init__(self) -> None:
        """Normalise what callers and wire messages naturally pass: ``stop="END"`` is one stop string,
        lists become tuples (hashable, immutable) and null means none."""
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, list):
                value = tuple(value)
            elif name == "stop" and isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, value)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming every impossible parameter."""
        problems = []
        if self.extra:
            problems.append(f"unknown sampling parameter(s): {', '.join(sorted(self.extra))}")
        if not _integer(self.max_new_tokens) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not _finite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not _integer(self.top_k) or self.top_k < 0:
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
        if self.seed is not None and not _integer(self.seed):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.stop, tuple) or any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, tuple):
            problems.append(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
        else:
            bad = [t for t in self.stop_token_ids if not _integer(t) or not 0 <= t < vocab_size]
            if bad:
                problems.append(f"stop_token_ids {bad[:4]} are not token ids of the vocabulary (0..{vocab_size - 1})")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Build from a plain dict (a wire message); unknown keys are kept so ``validate`` names them."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra={k: v for k, v in values.items() if k not in known})


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    prompt_ids: Sequence[TokenIds] | None = None,
    output_ids: Sequence[TokenIds] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (int64 ``[B]``) and their log-probabilities (float32 ``[B]``) for ``logits [B, V]``,
    both on the logits' device.

    Row ``b`` follows ``params[b]``; if sampled and ``generators[b]`` is set, its noise comes from that
    generator alone, so a seeded request's tokens do not depend on the rest of the batch. A greedy
    row's log-probability is the model's (after penalties); a sampled row's is under the filtered,
    renormalised distribution it was drawn from. ``prompt_ids``/``output_ids`` are only read for rows
    with penalties. A row with non-finite logits gets an arbitrary token and leaves the others alone.
    """
    logits = _penalise(logits.float(), params, prompt_ids, output_ids)
    greedy = [b for b, p in enumerate(params) if p.greedy]
    if len(greedy) == len(params):
        return _greedy(logits)
    sampled = [b for b, p in enumerate(params) if not p.greedy]
    if not greedy:
        return _sample(logits, params, generators)
    device = logits.device
    tokens = torch.empty(len(params), dtype=torch.long, device=device)
    logprobs = torch.empty(len(params), dtype=torch.float32, device=device)
    g_rows, s_rows = _to_device(greedy, torch.long, device), _to_device(sampled, torch.long, device)
    drawn = _sample(logits.index_select(0, s_rows), [params[b] for b in sampled], [generators[b] for b in sampled])
    parts = ((g_rows, _greedy(logits.index_select(0, g_rows))), (s_rows, drawn))
    for rows, (part_tokens, part_logprobs) in parts:
        tokens.index_copy_(0, rows, part_tokens)
        logprobs.index_copy_(0, rows, part_logprobs)
    return tokens, logprobs


def _greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = logits.argmax(-1)
    return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(-1)


def _sample(logits: torch.Tensor, params: Sequence[SamplingParams],
            generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, then top-k, min-p and top-p with per-row values, then one draw per row."""
    device = logits.device
    x = logits / _column([p.temperature for p in params], device)
    if any(p.min_p for p in params):
        # prob < min_p * max prob  <=>  logit < max logit + log(min_p); min_p = 0 gives -inf, keeping all
        floor = x.amax(-1, keepdim=True) + _column([p.min_p for p in params], device).log()
        x = x.masked_fill(x < floor, -math.inf)
    cut = [r for r, p in enumerate(params) if p.top_k or p.top_p < 1]
    if cut:
        x = _top_k_top_p(x, cut, [params[r] for r in cut])
    logp = x.log_softmax(-1)
    tokens = _race(logp.exp(), generators)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def _top_k_top_p(x: torch.Tensor, rows: list[int], params: list[SamplingParams]) -> torch.Tensor:
    """Mask ``x`` outside each row's top-k, then outside the smallest most-probable set reaching top-p
    of what is left; one sort of the rows concerned. Ties with the k-th logit are kept (as HF, vLLM)."""
    device, vocab = x.device, x.shape[-1]
    every_row = len(rows) == len(x)
    index = None if every_row else _to_device(rows, torch.long, device)
    values, order = (x if every_row else x.index_select(0, index)).sort(-1, descending=True)
    if any(p.top_k for p in params):
        last = _to_device([min(p.top_k or vocab, vocab) - 1 for p in params], torch.long, device)[:, None]
        values = values.masked_fill(values < values.gather(1, last), -math.inf)
    if any(p.top_p < 1 for p in params):
        probs = values.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        # top_p = 1 must keep everything, even where the float cumsum reaches 1 early
        top_p = _column([p.top_p if p.top_p < 1 else math.inf for p in params], device)
        values = values.masked_fill(mass_before >= top_p, -math.inf)
    kept = torch.empty_like(values).scatter_(1, order, values)
    return kept if every_row else x.index_copy(0, index, kept)


def _race(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row with probability ``probs`` by the exponential race, argmax(probs / E) with
    E ~ Exp(1): vectorised, unlike multinomial, and a seeded row's noise is its own generator's."""
    noise = torch.empty_like(probs)
    seeded = [(r, g) for r, g in enumerate(generators) if g is not None]
    if len(seeded) < len(generators):
        noise.exponential_()
    for r, generator in seeded:
        noise[r].exponential_(generator=generator)
    # a zero draw would make 0 / 0 = NaN win for a filtered-out token
    return (probs / noise.clamp_min_(torch.finfo(noise.dtype).tiny)).argmax(-1)


def _penalise(logits: torch.Tensor, params: Sequence[SamplingParams],
              prompt_ids: Sequence[TokenIds] | None, output_ids: Sequence[TokenIds] | None) -> torch.Tensor:
    """Repetition penalty on tokens of prompt or output (positive logits divided, negative multiplied,
    as HF and vLLM); frequency and presence penalties on output counts (OpenAI's definition). Only the
    rows asking for them are touched; ``logits`` itself is never modified."""
    rows = [b for b, p in enumerate(params)
            if p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty]
    if not rows:
        return logits
    if prompt_ids is None or output_ids is None:
        raise ValueError("penalties need prompt_ids and output_ids")
    device, vocab = logits.device, logits.shape[-1]
    chosen = [params[b] for b in rows]
    every_row = len(rows) == len(logits)
    index = None if every_row else _to_device(rows, torch.long, device)
    x = logits if every_row else logits.index_select(0, index)
    counts = _counts([output_ids[b] for b in rows], vocab, device)
    if any(p.repetition_penalty != 1 for p in chosen):
        seen = (counts + _counts([prompt_ids[b] for b in rows], vocab, device)) > 0
        penalty = _column([p.repetition_penalty for p in chosen], device)
        x = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)
    if any(p.frequency_penalty or p.presence_penalty for p in chosen):
        frequency = _column([p.frequency_penalty for p in chosen], device)
        presence = _column([p.presence_penalty for p in chosen], device)
        x = x - frequency * counts - presence * (counts > 0)
    return x if every_row else logits.index_copy(0, index, x)


def _counts(sequences: list[TokenIds], vocab: int, device: torch.device) -> torch.Tensor:
    """Per-row token counts ``[len(sequences), vocab]``, float32, scattered on the device."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    offsets = np.repeat(np.arange(len(arrays), dtype=np.int64) * vocab, [len(a) for a in arrays])
    flat = _to_device(np.concatenate(arrays) + offsets, torch.long, device)
    counts = torch.zeros(len(arrays) * vocab, dtype=torch.float32, device=device)
    counts.scatter_add_(0, flat, torch.ones(flat.shape, dtype=torch.float32, device=device))
    return counts.view(len(arrays), vocab)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return _to_device(values, torch.float32, device)[:, None]


def _to_device(values: list | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list on ``device``; from pinned memory on CUDA, so the copy neither blocks the host nor
    waits for the work already queued (a pageable copy would synchronise the stream)."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
