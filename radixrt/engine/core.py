"""The engine's core: model, KV pool, radix cache, scheduler and model runner behind a small
public API, and the core a worker process runs.

``step()`` is the one driver: it runs a batch and returns a ``RequestOutput`` for every request
that made progress or ended. A request is forgotten as soon as it ends (its last output carries
everything), so its id can be used again. ``Engine`` (``engine.py``) adds the loops over the same
steps that callers in the same process use: ``generate``, ``stream``, ``score_choices``.

A failure that belongs to one request (impossible logits, a tokenizer error) fails that request
alone; a failed forward (out of device memory, say) fails the requests of that batch. Either way
the request's pages go back and the engine goes on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict
from functools import partial

import numpy as np
import torch

from radixrt.cache import KVPool, PageAllocator, RadixCache
from radixrt.cache.kv_tiers import lower_tiers, tier_stats
from radixrt.engine.admission import ModelLimits, admit, check_resumed, check_retention
from radixrt.engine.constraints import Grammars
from radixrt.engine.cuda_graph import DecodeGraphs, estimate_bytes
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.inflight import InFlight
from radixrt.engine.model_runner import ModelRunner, StepResult, kv_cache_budget, kv_pool_dtype
from radixrt.engine.output_text import OutputText
from radixrt.engine.pins import Pins
from radixrt.engine.request import Request, State
from radixrt.engine.sampling import hold_stop_tokens
from radixrt.engine.scheduler import Scheduler
from radixrt.engine.window import KVWindow
from radixrt.model import load_model
from radixrt.model.loader import model_identity
from radixrt.outputs import RequestOutput
from radixrt.params import MAX_INT32, SamplingParams
from radixrt.prompts import Prompt, prompt_ids

RETENTION_CAP_FRACTION = 0.25  # of every tier's pages: a namespace's retention cap by default


class EngineCore:
    """What a worker runs: requests in, one batch a step, outputs out. Its arguments are
    ``Engine``'s."""

    def __init__(
        self,
        model: str | None = None,
        *,
        page_size: int = 16,
        kv_cache_bytes: int | None = None,
        max_batch_tokens: int = 2048,
        chunk_size: int = 1024,
        max_running: int = 64,
        enable_cache: bool = True,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        detokenize: bool = True,
        host_cache_bytes: int = 0,
        disk_cache: str | os.PathLike | None = None,
        disk_cache_bytes: int = 0,
        retention_cap_bytes: int | None = None,
        eviction: str = "lru",
        kv_dtype: str = "auto",
        cuda_graph: bool | None = None,
        cuda_graph_max_bs: int = 256,
        overlap: bool | None = None,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_cuda = torch.device(device).type == "cuda"
        if cuda_graph and not on_cuda:
            raise ValueError(f"CUDA graphs need a CUDA device; this engine runs on {device!r}")
        cuda_graph = on_cuda if cuda_graph is None else cuda_graph
        if cuda_graph and cuda_graph_max_bs < 1:
            raise ValueError(f"cuda_graph_max_bs must be at least 1, got {cuda_graph_max_bs}")
        self.overlap = on_cuda if overlap is None else bool(overlap)
        dtype = dtype or (torch.bfloat16 if on_cuda else torch.float32)
        loaded = load_model(model, dtype=dtype, device=device)
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, device
        self.model_path = loaded.path
        self.detokenize = detokenize and self.tokenizer is not None
        cfg = self.model.config
        graph_max_bs = min(cuda_graph_max_bs, max_running)
        estimate = cuda_graph and kv_cache_bytes is None
        graph_bytes = estimate_bytes(self.model.arch, graph_max_bs, dtype) if estimate else 0
        self.vocab_size = cfg.vocab_size
        self.max_context = self.model.max_context
        self.pool = KVPool(
            **self.model.kv_shape,
            page_size=page_size,
            dtype=kv_pool_dtype(kv_dtype, dtype),
            device=device,
            max_bytes=kv_cache_budget(device, kv_cache_bytes) - graph_bytes,
        )
        self.kv_dtype = kv_dtype
        self.allocator = PageAllocator(self.pool.num_pages)
        identity = model_identity(loaded.path, cfg) if disk_cache is not None else ""
        tiers, self.disk = lower_tiers(self.pool, host_cache_bytes, disk_cache, disk_cache_bytes, identity)
        self.cache = RadixCache(page_size, self.allocator, tiers, policy=eviction)
        every = self.pool.num_pages + (tiers.host_pages + tiers.disk_pages if tiers is not None else 0)
        cap = retention_cap_bytes / self.pool.bytes_per_page if retention_cap_bytes is not None else None
        self.retention_cap_pages = int(RETENTION_CAP_FRACTION * every if cap is None else cap)  # per namespace
        if self.disk is not None:
            self.cache.restore(self.disk.entries())  # a warm start: what an earlier run left on disk
        self.runner = ModelRunner(self.model, self.pool, device)
        if cuda_graph:
            self.use_decode_graphs(graph_max_bs)
        self.scheduler = Scheduler(
            self.cache,
            self.allocator,
            max_batch_tokens=max_batch_tokens,
            chunk_size=chunk_size,
            max_running=max_running,
            enable_cache=enable_cache,
            copy_slots=self.runner.copy_slots,
        )
        self.eos_ids = loaded.eos_ids
        self.runner.logits_processors.append(partial(hold_stop_tokens, eos_ids=self.eos_ids))
        self.requests: dict[str, Request] = {}  # queued or running
        self.failed_requests = 0
        self._ids = itertools.count()
        self._undelivered: list[RequestOutput] = []  # outputs the next step() returns
        self._mailboxes: dict[str, list[RequestOutput]] = {}  # outputs of requests an in-process driver added
        self._grammar_cache: Grammars | None = None
        self._inflight = InFlight(self.runner, self.scheduler)
        self.pins = Pins(self.cache, self.pool.num_pages)

    # ---- the core --------------------------------------------------------------------------

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        namespace: Hashable = None,
        tenant: str | None = None,
        arrival_time: float | None = None,
        prompt_logprobs_from: int | None = None,
        resumed: int = 0,
        pin: bool = False,
        score_next: Sequence[int] = (),
        retain: Sequence[tuple[int, float]] = (),
    ) -> str:
        """Queue a prompt (text or token ids); raises ``ValueError`` naming what is wrong with it.

        ``max_new_tokens`` is clipped to what the model's context and the KV pool can hold past
        the prompt; a request that reaches that limit ends with finish reason "length".
        ``tenant`` names who sent it: waiting requests of a tenant with fewer running go first
        (by default the tenant is the namespace).
        ``arrival_time`` (``time.perf_counter()`` clock; default now) dates the request for
        scheduling and latency figures, as a replayed trace needs. ``prompt_logprobs_from``
        asks for the log-probability of each prompt token from that position on. ``resumed``
        says that the prompt's last tokens are that request's output so far, produced elsewhere
        (a worker that died): its constraint, if any, takes them before it constrains the rest, and
        frequency, presence and repetition penalties count them as output. ``pin`` keeps the
        request's tokens (whole pages of them) in the cache after it finishes, safe from eviction,
        until ``unpin(request_id)``, best-effort (engine/pins.py: ``stats()["pins_refused"]``).
        ``score_next`` asks for the log-probability of each of these tokens right after the prompt
        (``next_logprobs`` of the last output): a ``select`` scores the first tokens of all its
        choices in one request. ``retain`` lists (tokens, ttl seconds): when the request ends, its
        first ``tokens`` tokens stay cached for ``ttl`` seconds after their last use (every hit
        renews it); they may move to a slower tier meanwhile, never out. A namespace retains at most
        ``retention_cap_pages`` pages (``RETENTION_CAP_FRACTION`` of every tier by default)."""
        params = params or SamplingParams()
        tokens = prompt_ids(prompt, self.tokenizer)
        grammars = self._grammars() if params.constrained and self.tokenizer is not None else None
        score_next = admit(
            tokens, params, self.limits, grammars, prompt_logprobs_from=prompt_logprobs_from, score_next=score_next
        )
        tokens = tokens.tolist()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"a request id is a non-empty string, got {request_id!r}")
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if tenant is not None and not isinstance(tenant, str):
            raise ValueError(f"a tenant is a string, got {tenant!r}")
        retain = check_retention(
            retain,
            len(tokens),
            lambda n: self.cache.retain_cost(tokens[:n], namespace),
            lambda: self.cache.retained_pages(namespace),
            self.retention_cap_pages,
            namespace,
        )
        if pin and request_id in self.pins:
            raise ValueError(f"request id {request_id!r} already names a pin: unpin it first")
        room = MAX_INT32 if params.kv_window else min(self.max_context, self.pool.num_tokens) - len(tokens)
        generator = torch.Generator(self.device).manual_seed(params.seed) if params.seed is not None else None
        text = OutputText(IncrementalDetokenizer(self.tokenizer), params.stop) if self.detokenize else None
        constraint = self._grammars().matcher(params) if params.constrained else None
        check_resumed(tokens, resumed, constraint)
        req = Request(
            request_id,
            np.asarray(tokens, dtype=np.int32),
            params,
            min(params.max_new_tokens, room),
            namespace,
            tenant=tenant,
            arrival=time.perf_counter() if arrival_time is None else float(arrival_time),
            prompt_logprobs_from=prompt_logprobs_from,
            generator=generator,
            output_text=text,
            constraint=constraint,
            resumed=resumed,
            pin=bool(pin),
            score_next=score_next,
            retain=retain,
            window=KVWindow(params.sink_tokens, params.kv_window, self.pool.page_size) if params.kv_window else None,
        )
        self.requests[request_id] = req
        self.scheduler.waiting.append(req)
        return request_id

    def step(self) -> list[RequestOutput]:
        """Run one batch. Returns an output for every request that made progress or ended since
        the last call (abort's outputs included), except those of requests that ``generate``,
        ``stream`` or ``score_choices`` added. Never raises for a request's fault."""
        self._advance()
        outputs, self._undelivered = self._undelivered, []
        return outputs

    def abort(self, request_id: str) -> bool:
        """End a queued or running request; its last output comes with the next ``step()``."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        req.settle()
        self.scheduler.remove(req)
        self._deliver(self._end(req, State.ABORTED, "abort"))
        return True

    def unpin(self, request_id: str) -> bool:
        """Release what a ``pin=True`` request kept cached (it becomes evictable, least recently
        used first, like any cached prefix). False if ``request_id`` holds no pin."""
        return self.pins.release(request_id)

    def flush_cache(self) -> bool:
        """Drop every cached prefix; refused (False) while requests are queued or running or pins are
        held, since their pages cannot go."""
        if self.requests or self.pins:
            return False
        self.cache.reset()
        return True

    def has_work(self) -> bool:
        return bool(self.requests or self._undelivered or self._inflight)

    def use_decode_graphs(self, max_bs: int, capture: bool = True) -> None:
        """Run decode batches of up to ``max_bs`` requests through static buffers, replaying a CUDA
        graph captured per batch size (``capture=False`` runs the same buffers eagerly: how a CPU
        checks them). Takes one page of the pool for the padding's K/V."""
        pad_page = int(self.allocator.alloc(1)[0])
        self.runner.graphs = DecodeGraphs(
            self.model, self.pool, max_bs=max_bs, max_context=self.max_context, pad_page=pad_page, capture=capture
        )

    # ---- misc ------------------------------------------------------------------------------

    @property
    def limits(self) -> ModelLimits:
        return ModelLimits(
            self.vocab_size, self.max_context, self.pool.num_tokens, self.detokenize, self.pool.page_size
        )

    def stats(self) -> dict:
        s, graphs = self.scheduler.stats, self.runner.graphs
        return {
            **asdict(s),
            "hit_rate": s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            "failed_requests": self.failed_requests,
            "pages_total": self.pool.num_pages,
            "pages_free": self.allocator.available(),
            "pages_cached": self.cache.total_size(),
            "pages_locked": self.cache.protected_size(),  # by running requests and pins
            **tier_stats(self.cache, self.disk),
            "pins": len(self.pins),
            "pins_refused": self.pins.refused,
            "pages_retained": self.cache.retained_pages(),
            "max_context": self.max_context,
            "kv_cache_tokens": self.pool.num_tokens,
            "kv_dtype": self.kv_dtype,
            "kv_bytes_per_token": self.pool.bytes_per_token,
            "overlap": self.overlap,
            "cuda_graph_max_bs": graphs.max_bs if graphs is not None else 0,  # the largest captured batch
            "cuda_graph_bytes": graphs.memory_bytes if graphs is not None else 0,
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
        }

    def close(self) -> None:
        """Finish the step in flight; write out what the disk tier has queued and release its
        directory."""
        while self._inflight:
            self._collect()
        if self.disk is not None:
            self.disk.close()

    # ---- one step --------------------------------------------------------------------------

    def _advance(self) -> None:
        """Queue a step and take in the results of the one before it: with ``overlap`` the step
        just queued runs on the device while the host files the previous one's outputs, and a
        request that this shows to have finished is settled one step late (``_settle``)."""
        if self._inflight.must_collect():
            self._collect()
        launched = self._launch()
        while len(self._inflight) > (1 if self.overlap and launched else 0):
            self._collect()

    def _launch(self) -> bool:
        """Schedule a batch and queue it on the device; False when there is nothing to run."""
        batch = self.scheduler.schedule()
        failed, self.scheduler.failed = self.scheduler.failed, []
        for req in failed:
            self._deliver(self._end(req, State.FAILED, "error", req.error))
        if not batch:
            return False
        try:
            self._inflight.launch(batch)
        except Exception as e:  # the whole forward failed: its requests fail, the engine goes on
            while self._inflight:
                self._collect()  # what they generated before it counts
            self._fail_batch(batch, e)
            return False
        return True

    def _collect(self) -> None:
        """Wait for the oldest step in flight and file its outputs."""
        step = self._inflight.oldest()
        try:
            results = step.launched.collect()
        except Exception as e:  # the device failed while it ran
            self._fail_batch(step.batch, e)
            return
        now = time.perf_counter()
        for (req, _), (end, retractions), result in zip(step.batch, step.marks, results):
            if req.done:
                continue  # it ended since (found finished by the step before, or aborted)
            try:
                out = self._apply(req, result, now, end, retracted=req.retractions != retractions)
            except Exception as e:  # a fault of this request alone (a tokenizer error, say)
                req.output_text = None  # its text is what failed, most likely: report token ids alone
                out = self._fail(req, f"{type(e).__name__}: {e}")
            if out is not None:
                self._deliver(out)

    def _fail_batch(self, batch: Sequence[tuple[Request, int]], e: Exception) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.empty_cache()
        for req, _ in batch:
            if not req.done:
                self._deliver(self._fail(req, f"the forward pass failed: {type(e).__name__}: {e}"))

    def _apply(self, req: Request, result: StepResult, now: float, end: int, retracted: bool) -> RequestOutput | None:
        """Take one step's result into ``req``; its output, if it has one to report. ``end``: the
        tokens it had computed once the step was queued; ``retracted``: since then (what the step
        scored of its prompt is computed again)."""
        if result.error is not None:
            return self._fail(req, result.error)
        if not retracted:
            req.prompt_logprobs += result.prompt_logprobs
            if result.next_logprobs is not None:
                req.next_logprobs = result.next_logprobs
        if result.token is None:
            if end == req.length and req.num_known >= req.max_new_tokens:
                return self._finish(req, "length")  # max_new_tokens == 0: the prompt is computed (and cached)
            return None
        verdict = req.take(result.token, result.logprob, now, result.top_logprobs, self.eos_ids)
        if verdict is None:
            return req.news()
        reason, detail = verdict
        return self._fail(req, detail) if reason == "error" else self._finish(req, reason, detail)

    def _finish(self, req: Request, reason: str, matched: str | int | None = None) -> RequestOutput:
        req.settle()
        self.scheduler.remove(req)
        if req.pin and self.scheduler.enable_cache:
            self.pins.keep(req)
        if self.scheduler.enable_cache:
            for tokens, ttl in req.retain:
                self.cache.retain(req.tokens[: min(tokens, req.computed)], ttl, req.namespace)
        req.matched_stop = matched
        return self._end(req, State.FINISHED, reason)

    def _fail(self, req: Request, error: str) -> RequestOutput:
        req.settle()
        self.scheduler.remove(req)
        return self._end(req, State.FAILED, "error", error)

    def _end(self, req: Request, state: State, reason: str, error: str | None = None) -> RequestOutput:
        req.state, req.finish_reason, req.error = state, reason, error
        req.drop_pending()
        self.failed_requests += state is State.FAILED
        self.requests.pop(req.id, None)
        return req.news()

    def _deliver(self, out: RequestOutput) -> None:
        mailbox = self._mailboxes.get(out.request_id)
        (mailbox if mailbox is not None else self._undelivered).append(out)

    # ---- input -----------------------------------------------------------------------------

    def _grammars(self) -> Grammars:
        """The constraint compiler, made on the first constrained request (it loads xgrammar)."""
        if self._grammar_cache is None:
            self._grammar_cache = Grammars(self._tokenizer(), self.vocab_size)
            self.runner.logits_processors.append(self._grammar_cache)
        return self._grammar_cache

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model ships no tokenizer: give prompts as token ids")
        return self.tokenizer
