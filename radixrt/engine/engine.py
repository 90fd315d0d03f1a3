"""The in-process engine: model, KV pool, radix cache and scheduler behind a small public API."""
from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import asdict

import numpy as np
import torch

from radixrt.cache import KVPool, PageAllocator, RadixCache
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.request import ChoiceScore, GenerateOutput, Request, State
from radixrt.engine.sampling import SamplingParams, apply_penalties, sample
from radixrt.engine.scheduler import Scheduler
from radixrt.model import SequenceChunk, build_batch, load_model

Prompt = str | Sequence[int]


class Engine:
    """``Engine(model=None)`` serves the default model (SmolLM2-135M-Instruct); ``model`` may be a
    Hugging Face directory or a .gguf file. On a CPU the KV pool takes ``kv_cache_bytes``."""

    def __init__(
        self,
        model: str | None = None,
        *,
        page_size: int = 16,
        kv_cache_bytes: int = 512 * 2**20,
        max_batch_tokens: int = 2048,
        chunk_size: int = 1024,
        max_running: int = 64,
        enable_cache: bool = True,
        device: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        loaded = load_model(model, dtype=dtype, device=device)
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, device
        cfg = self.model.config
        self.vocab_size = cfg.vocab_size
        self.max_context = self.model.max_context
        self.pool = KVPool(num_layers=cfg.num_hidden_layers, kv_heads=cfg.num_key_value_heads, head_dim=self.model.head_dim,
                           page_size=page_size, dtype=dtype, device=device, max_bytes=kv_cache_bytes)
        self.allocator = PageAllocator(self.pool.num_pages)
        self.cache = RadixCache(page_size, self.allocator)
        self.scheduler = Scheduler(self.cache, self.allocator, max_batch_tokens=max_batch_tokens, chunk_size=chunk_size,
                                   max_running=max_running, enable_cache=enable_cache)
        self.eos_ids = self._eos_ids()
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()

    # ---- public API ------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        ids = self._tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *, request_id: str | None = None,
                    namespace: Hashable = None) -> str:
        """Queue a prompt (text or token ids); raises ``ValueError`` naming what is wrong with it."""
        params = params or SamplingParams()
        params.validate(self.vocab_size)
        tokens = self._tokens(prompt)
        if not tokens:
            raise ValueError("the prompt is empty")
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:4]} are outside the vocabulary (0..{self.vocab_size - 1})")
        if len(tokens) >= self.max_context:
            raise ValueError(f"the prompt has {len(tokens)} tokens; the model's context is {self.max_context}")
        if self.scheduler.pages_for(len(tokens) + 1) > self.pool.num_pages:
            raise ValueError(f"the prompt has {len(tokens)} tokens; the KV cache holds {self.pool.num_tokens}")
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        detokenizer = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        req = Request(request_id, len(tokens), tokens, params, namespace, generator=gen, detokenizer=detokenizer)
        self.requests[request_id] = req
        self.scheduler.waiting.append(req)
        return request_id

    def step(self) -> list[Request]:
        """Run one batch; returns the requests that ended in it."""
        batch = self.scheduler.schedule()
        ended, self.scheduler.failed = self.scheduler.failed, []
        if batch:
            with torch.no_grad():
                logits = self.model(self._forward_batch(batch), self.pool)
            for (req, n), row in zip(batch, logits):
                self.scheduler.progress(req, n)
                if req.computed == len(req.tokens) and self._emit(req, row):
                    ended.append(req)
        for req in ended:
            req.finished_at = time.perf_counter()
        return ended

    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | None = None) -> GenerateOutput | list[GenerateOutput]:
        single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer)))
        ids: list[str] = []
        try:
            for p in [prompts] if single else prompts:
                ids.append(self.add_request(p, params))
        except ValueError:
            for i in ids:  # all or nothing: no half of a batch left queued
                self.abort(i)
                self.requests.pop(i)
            raise
        while any(not self.requests[i].done for i in ids):
            self.step()
        outputs = [GenerateOutput.of(self.requests.pop(i)) for i in ids]
        return outputs[0] if single else outputs

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """The text as it is generated, piece by piece."""
        rid = self.add_request(prompt, params)
        req, sent = self.requests[rid], 0
        try:
            while not req.done:
                self.step()
                if len(req.text) > sent:
                    yield req.text[sent:]
                    sent = len(req.text)
        finally:
            self.abort(rid)
            self.requests.pop(rid, None)

    def score_choices(self, prompt: Prompt, choices: list[Prompt], namespace: Hashable = None) -> list[ChoiceScore]:
        """The log-probability of each continuation in ``choices`` after ``prompt`` (what the
        frontend's ``select`` ranks). The prompt is computed once, through the cache; all choices
        then run in one forward on top of it."""
        base = self._tokens(prompt)
        options = [self._tokens(c) for c in choices]
        if not options or any(not o for o in options):
            raise ValueError("score_choices needs at least one choice, and no empty one")
        rid = self.add_request(base, SamplingParams(max_new_tokens=0), namespace=namespace)
        while not self.requests[rid].done:  # the prompt is computed and left in the cache
            self.step()
        self.requests.pop(rid)
        page_size = self.cache.page_size
        m = self.cache.match_prefix(base[:-1], namespace)  # the last prompt token gives the first choice's logits
        self.cache.lock(m.last_node)
        own = []
        try:
            chunks = []
            for option in options:
                total = len(base) + len(option)
                pages = self.scheduler.alloc(self.scheduler.pages_for(total) - m.pages.size)
                if pages is None:
                    raise ValueError(f"not enough KV cache memory to score {len(options)} choices of this length")
                own.append(pages)
                chunks.append(SequenceChunk(np.asarray(base[m.length :] + option), m.length, np.concatenate([m.pages, pages]), True))
            with torch.no_grad():
                logprobs = torch.log_softmax(self.model(build_batch(chunks, page_size, self.device), self.pool), -1).cpu()
        finally:
            for pages in own:
                self.allocator.free(pages)
            self.cache.unlock(m.last_node)
        scores, row = [], 0
        for option, chunk in zip(options, chunks):
            first = len(chunk.tokens) - len(option) - 1  # the row whose logits predict option[0]
            picked = logprobs[row + first + torch.arange(len(option)), torch.tensor(option)]
            scores.append(ChoiceScore(float(picked.sum()), len(option)))
            row += len(chunk.tokens)
        return scores

    def abort(self, request_id: str) -> bool:
        req = self.requests.get(request_id)
        if req is None or req.done:
            return False
        self.scheduler.remove(req)
        req.state, req.finish_reason, req.finished_at = State.ABORTED, "abort", time.perf_counter()
        return True

    def stats(self) -> dict:
        s = self.scheduler.stats
        return {
            **asdict(s),
            "hit_rate": s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            "pages_total": self.pool.num_pages,
            "pages_free": self.allocator.available(),
            "pages_cached": self.cache.total_size(),
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
        }

    # ---- internals -------------------------------------------------------------------------

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model ships no tokenizer: give prompts as token ids")
        return self.tokenizer

    def _tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return list(self._tokenizer().encode(prompt, add_special_tokens=False))
        if any(not isinstance(t, (int, np.integer)) or isinstance(t, bool) for t in prompt):
            raise ValueError("a prompt is a string or a sequence of integer token ids")
        return [int(t) for t in prompt]

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (getattr(self.tokenizer, "eos_token_id", None), self.model.config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(source)
        return ids

    def _forward_batch(self, batch: list[tuple[Request, int]]):
        page_size = self.cache.page_size
        chunks = [SequenceChunk(np.asarray(r.tokens[r.computed : r.computed + n]), r.computed,
                                r.pages[: -(-(r.computed + n) // page_size)]) for r, n in batch]
        return build_batch(chunks, page_size, self.device)

    def _emit(self, req: Request, logits: torch.Tensor) -> bool:
        """Sample the next token of ``req``; True when the request has ended."""
        p = req.params
        if len(req.output) >= p.max_new_tokens:  # max_new_tokens == 0: prompt computed (and cached), nothing generated
            return self._finish(req, "length")
        logits = logits.float().cpu()
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            counts = torch.bincount(torch.tensor(req.output, dtype=torch.long), minlength=self.vocab_size).float()
            logits = apply_penalties(logits.clone(), torch.tensor(sorted(set(req.tokens))), counts, p)
        token, logprob = sample(logits, p, req.generator)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        req.tokens.append(token)
        req.logprobs.append(logprob)
        stop_token = token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos)
        out_of_room = len(req.output) >= p.max_new_tokens or len(req.tokens) >= self.max_context
        if req.detokenizer is not None:
            seen = len(req.text)
            req.text = req.detokenizer.update(req.output[:-1] if stop_token else req.output, final=stop_token or out_of_room)
            found = [at for s in p.stop if (at := req.text.find(s, max(0, seen - len(s) + 1))) >= 0]
            if found:
                req.text = req.text[: min(found)]
                return self._finish(req, "stop")
        if stop_token:
            return self._finish(req, "stop")
        if out_of_room:
            return self._finish(req, "length")
        return False

    def _finish(self, req: Request, reason: str) -> bool:
        self.scheduler.remove(req)
        req.state, req.finish_reason = State.FINISHED, reason
        return True
