"""The batch sampler that turns a step's logits into next tokens (the parameters it follows are in
``params.py``).

``sample_batch`` runs on the logits' device for the whole batch and never synchronises with the host:
the caller copies tokens and log-probabilities back once per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from radixrt.model.batch import to_device
from radixrt.params import GREEDY_EPS, SamplingParams

__all__ = ["GREEDY_EPS", "SamplingParams", "sample_batch"]

TokenIds = Sequence[int] | np.ndarray


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
    g_rows, s_rows = to_device(greedy, torch.long, device), to_device(sampled, torch.long, device)
    drawn = _sample(logits.index_select(0, s_rows), [params[b] for b in sampled], [generators[b] for b in sampled])
    parts = ((g_rows, _greedy(logits.index_select(0, g_rows))), (s_rows, drawn))
    for rows, (part_tokens, part_logprobs) in parts:
        tokens.index_copy_(0, rows, part_tokens)
        logprobs.index_copy_(0, rows, part_logprobs)
    return tokens, logprobs


def _greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = logits.argmax(-1)
    return tokens, logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(-1)


def _sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> tuple[torch.Tensor, torch.Tensor]:
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
    index = None if every_row else to_device(rows, torch.long, device)
    values, order = (x if every_row else x.index_select(0, index)).sort(-1, descending=True)
    if any(p.top_k for p in params):
        last = to_device([min(p.top_k or vocab, vocab) - 1 for p in params], torch.long, device)[:, None]
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


def _penalise(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_ids: Sequence[TokenIds] | None,
    output_ids: Sequence[TokenIds] | None,
) -> torch.Tensor:
    """Repetition penalty on tokens of prompt or output (positive logits divided, negative multiplied,
    as HF and vLLM); frequency and presence penalties on output counts (OpenAI's definition). Only the
    rows asking for them are touched; ``logits`` itself is never modified."""
    rows = [b for b, p in enumerate(params) if p.repetition_penalty != 1 or p.frequency_penalty or p.presence_penalty]
    if not rows:
        return logits
    if prompt_ids is None or output_ids is None:
        raise ValueError("penalties need prompt_ids and output_ids")
    device, vocab = logits.device, logits.shape[-1]
    chosen = [params[b] for b in rows]
    every_row = len(rows) == len(logits)
    index = None if every_row else to_device(rows, torch.long, device)
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
    flat = to_device(np.concatenate(arrays) + offsets, torch.long, device)
    counts = torch.zeros(len(arrays) * vocab, dtype=torch.float32, device=device)
    counts.scatter_add_(0, flat, torch.ones(flat.shape, dtype=torch.float32, device=device))
    return counts.view(len(arrays), vocab)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return to_device(values, torch.float32, device)[:, None]


def hold_stop_tokens(logits: torch.Tensor, requests: Sequence, eos_ids: Sequence[int]) -> None:
    """A logits processor: refuse end-of-sequence and stop tokens to requests short of their
    ``min_new_tokens`` (tokens still on the device count: they are generated)."""
    for row, req in enumerate(requests):
        if req.num_output < req.params.min_new_tokens:
            held = [*req.params.stop_token_ids, *([] if req.params.ignore_eos else eos_ids)]
            logits[row, held] = -torch.inf
