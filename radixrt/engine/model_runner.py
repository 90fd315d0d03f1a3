"""The model runner: one forward over the scheduled batch, then the whole batch sampled on the
device, with one copy to the host per step. ``launch`` queues a step and returns at once;
``Launched.collect`` waits for its results, so that the engine may schedule the next step in
between (overlap scheduling, engine/core.py).

Between the forward and the sampler, ``logits_processors`` edit the rows about to be sampled in
place: that is where constrained decoding applies its token bitmasks. The runner knows nothing of
text, stop rules or the cache; it reports per request what the step computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from radixrt.cache import KVPool
from radixrt.engine.request import Request
from radixrt.engine.sampling import sample_batch
from radixrt.model import CausalLM, SequenceChunk, build_batch

if TYPE_CHECKING:
    from radixrt.engine.cuda_graph import DecodeGraphs

CPU_KV_CACHE_BYTES = 512 * 2**20
GPU_KV_CACHE_FRACTION = 0.8  # of the device memory free once the weights are loaded

LogitsProcessor = Callable[[torch.Tensor, Sequence[Request]], None]
"""Edits ``logits [rows, vocab]`` (float32) in place, one row per request in ``requests``' order,
before they are sampled. Setting a row's disallowed tokens to -inf constrains it; a row left with
no allowed token fails its request."""


KV_DTYPES = {
    "auto": None,  # the model's dtype
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8": getattr(torch, "float8_e4m3fn", None),  # e4m3, a float32 scale per token and KV head
    "int8": torch.int8,  # a float32 scale per token and KV head
    "int4": torch.uint8,  # two values a byte, a float16 scale and zero per group of channels
}


def kv_pool_dtype(kv_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV pool's dtype for ``kv_dtype`` (``"auto"``: the model's). The kernels cast float pools
    to the model's dtype and dequantize the others as they load each row
    (``radixrt.kernels.layout``)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype {kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
    if kv_dtype == "fp8" and KV_DTYPES["fp8"] is None:
        raise ValueError("kv_dtype 'fp8' needs a torch with float8_e4m3fn")
    return KV_DTYPES[kv_dtype] or model_dtype


def kv_cache_budget(device: str, kv_cache_bytes: int | None, fraction: float = GPU_KV_CACHE_FRACTION) -> int:
    """Bytes for the KV pool: as given, else a fraction of the GPU's free memory, else 512 MiB."""
    if kv_cache_bytes is not None:
        return kv_cache_bytes
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * fraction)
    return CPU_KV_CACHE_BYTES


@dataclass
class StepResult:
    """What the step computed for one request: a sampled token (None when this step ended
    inside its prompt), the prompt tokens' log-probabilities it asked for, or an error."""

    token: int | None = None
    logprob: float = 0.0
    prompt_logprobs: list[float] = field(default_factory=list)
    next_logprobs: list[float] | None = None  # of the request's ``score_next`` tokens, when this step computed them
    top_logprobs: list[tuple[int, float]] | None = None  # the sampled step's most likely tokens, when asked for
    error: str | None = None


@dataclass
class _Plan:
    """Where one request's rows sit in the step's logits."""

    prompt_rows: range  # rows whose logits score prompt tokens
    prompt_targets: np.ndarray  # the prompt tokens they score
    sample_row: int | None
    next_row: int | None = None  # the prompt's last position, when ``score_next`` tokens are scored there
    next_targets: tuple[int, ...] = ()
    top_logprobs: int = 0  # the sampled row's most likely tokens to report


@dataclass
class Launched:
    """A step queued on the device: its sampled tokens stay there for the next step to read;
    ``collect`` waits for the one copy of its results to the host."""

    plans: list[_Plan]
    sampled: dict[Request, int]  # the requests that sampled a token: their row in ``tokens``
    tokens: torch.Tensor  # on the device
    values: torch.Tensor  # tokens, log-probabilities, status codes, scored prompt tokens: on the host
    top: tuple[torch.Tensor, torch.Tensor] | None  # the top_logprobs ids and values asked for, on the host
    ready: torch.cuda.Event | None  # recorded after the copies, on CUDA

    def collect(self) -> list[StepResult]:
        """What the step computed, request by request in the batch's order."""
        if self.ready is not None:
            self.ready.synchronize()
        k = len(self.sampled)
        values = self.values.tolist()
        scored_values = iter(values[3 * k :])
        sampled_values = iter(zip(values[:k], values[k : 2 * k], values[2 * k : 3 * k]))
        tops = iter(zip(self.top[0].tolist(), self.top[1].tolist())) if self.top is not None else None
        results = []
        for plan in self.plans:
            result = StepResult(prompt_logprobs=[next(scored_values) for _ in plan.prompt_rows])
            if plan.next_row is not None:
                result.next_logprobs = [next(scored_values) for _ in plan.next_targets]
            if plan.sample_row is not None:
                token, result.logprob, code = next(sampled_values)
                result.token, result.error = int(token), _SAMPLE_ERRORS[int(code)]
                if plan.top_logprobs:
                    ids, lps = next(tops)
                    result.top_logprobs = list(zip(ids[: plan.top_logprobs], lps[: plan.top_logprobs]))
            results.append(result)
        return results


def _to_host(values: torch.Tensor, top: tuple[torch.Tensor, torch.Tensor] | None):
    """``values`` and ``top`` copied to the host, and the event that says they have arrived: on
    CUDA into pinned memory without waiting, so the host goes on while the step runs."""
    if values.device.type != "cuda":
        return values, top, None
    pinned = lambda t: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)  # noqa: E731
    top = (pinned(top[0]), pinned(top[1])) if top is not None else None
    values = pinned(values)
    ready = torch.cuda.Event()
    ready.record()
    return values, top, ready


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, device: str) -> None:
        self.model, self.pool, self.device = model, pool, device
        self.page_size = pool.page_size
        self.logits_processors: list[LogitsProcessor] = []
        self.graphs: DecodeGraphs | None = None  # captured decode steps (engine/cuda_graph.py), on CUDA

    def launch(
        self,
        batch: Sequence[tuple[Request, int]],
        refresh_sinks: Sequence[Request] = (),
        previous: Launched | None = None,
    ) -> Launched:
        """Queue one step on the device: feed each request's next ``n`` tokens and sample a token
        for those whose tokens are then all computed and that may still generate. A request's last
        token may still be on the device (``Request.pending``): ``previous``, the step that
        sampled it, hands it over there, with no round trip to the host. ``refresh_sinks``: windows
        that slid, whose sinks are computed again in the same forward (engine/window.py; each layer
        writes every new token's K/V before it attends, so their chunks read the new sinks).
        ``Launched.collect()`` waits for the step and reads its results."""
        chunks, plans, feeds, row, fed = [], [], [], 0, 0
        for req, n in batch:
            chunk, plan = self._chunk(req, n, row)
            fed += n
            if req.pending:  # its last token, sampled by ``previous``
                feeds.append((fed - 1, previous.sampled[req]))
            chunks.append(chunk)
            plans.append(plan)
            row += n - chunk.first_logit
        chunks += [self._sink_chunk(req) for req in refresh_sinks]  # last: their logit rows go unread
        with torch.no_grad():
            logits = self._forward(chunks, feeds, previous)
            sampled = [(req, p.sample_row) for (req, _), p in zip(batch, plans) if p.sample_row is not None]
            requests = [r for r, _ in sampled]
            tokens, logprobs, status, top = self._sample(logits, requests, [i for _, i in sampled])
            scored = self._score_prompts(logits, plans)
            values = torch.cat([tokens.double(), logprobs.double(), status.double(), scored.double()])
            return Launched(plans, {r: i for i, r in enumerate(requests)}, tokens, *_to_host(values, top))

    def _forward(self, chunks: list[SequenceChunk], feeds: list[tuple[int, int]], previous: Launched | None):
        """The logits of ``chunks``: a captured CUDA graph replayed for a decode batch that has one,
        else an eager forward. ``feeds`` (input index, row of ``previous.tokens``) are tokens that
        the previous step sampled, copied device to device."""
        graphs = self.graphs if self.graphs is not None and self.graphs.can_run(chunks) else None
        batch = build_batch(graphs.pad(chunks) if graphs else chunks, self.page_size, self.device)
        if feeds:
            into, rows = (torch.as_tensor(x, device=batch.input_ids.device) for x in zip(*feeds))
            batch.input_ids[into] = previous.tokens[rows]
        if graphs is None:
            return self.model(batch, self.pool)
        return graphs.run(batch)[: len(chunks)]

    def _chunk(self, req: Request, n: int, first_row: int) -> tuple[SequenceChunk, _Plan]:
        """The chunk that feeds ``req``'s next ``n`` tokens, its logits starting at ``first_row``."""
        start, end = req.computed, req.computed + n
        lo = hi = end  # positions whose logits score prompt tokens (position p scores token p + 1)
        if req.prompt_logprobs_from is not None:
            lo = max(start, req.prompt_logprobs_from - 1)
            hi = max(lo, min(end, req.prompt_len - 1))
        first_logit = lo - start if hi > lo else n - 1
        last = req.prompt_len - 1  # where the score_next tokens are scored
        scores_next = bool(req.score_next) and req.next_logprobs is None and start <= last < end
        if scores_next:
            first_logit = min(first_logit, last - start)
        samples = end == req.length and req.num_output < req.max_new_tokens
        shift = req.kv_shift
        pages = req.pages[: -(-(end - shift) // self.page_size)]
        chunk = SequenceChunk(req.tokens[start:end], start - shift, pages, first_logit, shift)
        plan = _Plan(
            range(first_row, first_row + hi - lo),
            req.tokens[lo + 1 : hi + 1].copy(),
            first_row + n - 1 - first_logit if samples else None,
            first_row + last - start - first_logit if scores_next else None,
            req.score_next,
            req.params.top_logprobs if samples else 0,
        )
        return chunk, plan

    def copy_slots(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Every layer's K/V (and scales) at pool slots ``src`` into slots ``dst``."""
        src, dst = (torch.as_tensor(x, device=self.pool.k.device) for x in (src, dst))
        for t in self.pool.tensors():
            flat = t.view(t.shape[0], -1, *t.shape[3:])
            flat[:, dst] = flat[:, src]

    @staticmethod
    def _sink_chunk(req: Request) -> SequenceChunk:
        """A window's sinks computed again into its private pages, at the positions right before
        the window (engine/window.py)."""
        w = req.window
        return SequenceChunk(req.tokens[: w.sinks], 0, req.pages[: w.sink_pages], shift=w.shift)

    @staticmethod
    def _score_prompts(logits: torch.Tensor, plans: list[_Plan]) -> torch.Tensor:
        """Log-probabilities of the prompt tokens and the ``score_next`` tokens that score requests
        asked for (none, usually), plan by plan."""
        rows, targets = [], []
        for p in plans:
            rows += p.prompt_rows
            targets += p.prompt_targets.tolist()
            if p.next_row is not None:
                rows += [p.next_row] * len(p.next_targets)
                targets += p.next_targets
        if not rows:
            return logits.new_zeros(0)
        targets = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
        return torch.log_softmax(logits[rows], -1).gather(1, targets[:, None])[:, 0]

    def _sample(self, logits: torch.Tensor, requests: list[Request], rows: list[int]) -> tuple[torch.Tensor, ...]:
        """Tokens, log-probabilities and a status code (an index into ``_SAMPLE_ERRORS``) for
        ``rows``, all on the device."""
        picked = logits[rows]
        for processor in self.logits_processors:
            processor(picked, requests)
        broken = (picked.isnan() | picked.isposinf()).any(-1)
        allowed = picked.amax(-1) > -torch.inf
        status = torch.where(broken, 1, torch.where(allowed, 0, 2))
        if not requests:
            return picked.new_zeros(0), picked.new_zeros(0), status, None
        tokens, logprobs = sample_batch(
            picked,
            [r.params for r in requests],
            [r.generator for r in requests],
            [r.tokens[: r.penalty_split] for r in requests],
            [r.tokens[r.penalty_split :] for r in requests],
        )
        return tokens, logprobs, status, self._top(picked, requests)

    @staticmethod
    def _top(picked: torch.Tensor, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The most likely tokens and their log-probabilities (of the logits the sampler saw, before
        temperature) for the rows that ask for ``top_logprobs``, in row order."""
        rows = [i for i, r in enumerate(requests) if r.params.top_logprobs]
        if not rows:
            return None
        k = max(requests[i].params.top_logprobs for i in rows)
        values, ids = picked[rows].float().log_softmax(-1).topk(k, -1)
        return ids, values


_SAMPLE_ERRORS = (None, "the logits are not finite (NaN or +infinity)", "the logits processors left no token allowed")
