"""Live replay: a trace's sessions driven through a backend (``radixrt.lang.Runtime`` in-process,
or ``RuntimeEndpoint`` for a running ``radixrt serve``), with closed-loop sessions.

Each session runs on a thread of a pool of ``concurrency``: a turn is sent when the session's
previous turn has finished and not before the turn is due. When a turn is due depends on the
timing: ``recorded`` (its arrival time, divided by ``speedup``), ``rate`` (sessions start ``1/R``
seconds apart; a session's turns follow one another at once) or ``max`` (every session at once).
Each request generates its recorded output length with end-of-sequence ignored, so a replay does
the work the recording did.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from radixrt.lang.backend import Backend
from radixrt.params import SamplingParams
from radixrt.replay.trace import TraceRequest, output_length, prompt_tokens, sessions

TIMINGS = ("recorded", "rate", "max")
LONG_PROMPTS = ("skip", "cut")


@dataclass
class ReplayOptions:
    timing: str = "recorded"
    rate: float = 1.0  # sessions started per second, with timing "rate"
    speedup: float = 1.0  # with timing "recorded": arrival times are divided by this
    concurrency: int = 64  # sessions in flight at once
    limit: int | None = None  # replay only the first K requests (by arrival)
    long_prompts: str = "skip"  # prompts longer than the model takes: "skip" them, or "cut" them
    default_output: int = 128  # tokens to generate when the trace records no output
    max_output: int | None = None  # generate at most this many tokens a request
    progress: bool = True

    def check(self) -> None:
        if self.timing not in TIMINGS:
            raise ValueError(f"timing is one of {', '.join(TIMINGS)}, not {self.timing!r}")
        if self.long_prompts not in LONG_PROMPTS:
            raise ValueError(f"long_prompts is one of {', '.join(LONG_PROMPTS)}, not {self.long_prompts!r}")
        if self.rate <= 0 or self.speedup <= 0 or self.concurrency < 1:
            raise ValueError("rate and speedup must be > 0, concurrency >= 1")


@dataclass
class RequestRecord:
    """What happened to one request: times are ``time.perf_counter()`` seconds."""

    id: str
    session: str
    prompt: np.ndarray
    sent: float = 0.0
    finished: float = 0.0
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    skipped: str | None = None  # why it was not sent (a prompt too long for the model)
    cut: bool = False  # its prompt was cut to fit

    @property
    def time_to_first_token(self) -> float | None:
        return self.token_times[0] - self.sent if self.token_times else None


@dataclass
class ReplayResult:
    records: list[RequestRecord]
    started: float
    ended: float
    occupancy: list[tuple[float, float]]  # (seconds into the replay, fraction of the KV pool cached)
    tier_tokens: tuple[int, int] = (0, 0)  # prompt tokens loaded back from host and disk tiers meanwhile


class Replayer:
    def __init__(self, backend: Backend, options: ReplayOptions | None = None) -> None:
        self.backend, self.options = backend, options or ReplayOptions()
        self.options.check()
        self._lock = threading.Lock()
        self._totals = [0, 0, 0]  # prompt, cached and output tokens of the requests done so far

    def run(self, requests: list[TraceRequest]) -> ReplayResult:
        opts = self.options
        chosen = sorted(requests, key=lambda r: r.arrival)[: opts.limit] if opts.limit else list(requests)
        by_session = sessions(chosen)
        order = sorted(by_session, key=lambda s: by_session[s][0].arrival)
        info = self.backend.get_server_info()
        room, tiers_before = _room(info), _tier_tokens(info)
        records = {r.id: self._prepare(r, room) for r in chosen}
        bar = tqdm(total=len(chosen), disable=not opts.progress, desc="replay", unit="req")
        stop, occupancy = threading.Event(), []
        self.started = time.perf_counter()
        watcher = threading.Thread(target=self._watch, args=(stop, occupancy), daemon=True)
        watcher.start()
        try:
            with ThreadPoolExecutor(opts.concurrency) as pool:
                futures = [
                    pool.submit(self._session, by_session[name], records, k, bar) for k, name in enumerate(order)
                ]
                for f in futures:
                    f.result()
        finally:
            stop.set()
            watcher.join(timeout=5)
            bar.close()
        ended = time.perf_counter()
        tiers = [after - before for after, before in zip(_tier_tokens(self.backend.get_server_info()), tiers_before)]
        return ReplayResult([records[r.id] for r in chosen], self.started, ended, occupancy, tuple(tiers))

    # ---- one session -----------------------------------------------------------------------

    def _session(self, turns: list[TraceRequest], records: dict[str, RequestRecord], index: int, bar: tqdm) -> None:
        opts = self.options
        for k, request in enumerate(turns):
            record = records[request.id]
            if record.skipped is None:
                if opts.timing == "recorded":
                    due = request.arrival / opts.speedup
                else:
                    due = index / opts.rate if opts.timing == "rate" and k == 0 else 0.0
                delay = self.started + due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self._send(request, record)
            with self._lock:
                self._totals[0] += record.prompt_tokens
                self._totals[1] += record.cached_tokens
                self._totals[2] += record.output_tokens
                bar.update()
                bar.set_postfix_str(self._postfix(), refresh=False)

    def _send(self, request: TraceRequest, record: RequestRecord) -> None:
        params = SamplingParams(max_new_tokens=record.output_tokens, ignore_eos=True, temperature=1.0)
        record.sent = time.perf_counter()
        try:
            handle = self.backend.submit(record.prompt.tolist(), params)
            last = None
            for out in handle:
                record.token_times += out.token_times
                last = out
            record.prompt_tokens, record.cached_tokens = last.prompt_tokens, last.cached_tokens
            record.finish_reason, record.error = last.finish_reason, last.error
        except Exception as e:  # refused, or the server went away: counted, and the replay goes on
            record.finish_reason, record.error = "error", f"{type(e).__name__}: {e}"
        record.finished = time.perf_counter()
        record.output_tokens = len(record.token_times)

    def _prepare(self, request: TraceRequest, room: int | None) -> RequestRecord:
        """The request's prompt and output length, fitted to the model's room (``long_prompts``)."""
        tokenizer = getattr(self.backend, "tokenizer", None)
        prompt = prompt_tokens(request, tokenizer)
        out = output_length(request, tokenizer, self.options.default_output)
        if self.options.max_output is not None:
            out = min(out, self.options.max_output)
        record = RequestRecord(request.id, request.session, prompt, output_tokens=out)
        if room is not None and prompt.size + out >= room:
            if self.options.long_prompts == "skip" or prompt.size == 0:
                record.skipped = f"prompt of {prompt.size} tokens and {out} to generate exceed the model's {room}"
            else:  # keep the beginning (what requests share); at most half the room goes to the output
                record.output_tokens = min(out, room // 2)
                record.prompt, record.cut = prompt[: room - 1 - record.output_tokens], True
        return record

    # ---- progress --------------------------------------------------------------------------

    def _postfix(self) -> str:
        prompt, cached, output = self._totals
        elapsed = time.perf_counter() - self.started
        return f"hit {cached / prompt if prompt else 0.0:.1%}, {output / max(elapsed, 1e-9):.0f} tok/s"

    def _watch(self, stop: threading.Event, occupancy: list[tuple[float, float]], interval: float = 0.5) -> None:
        while not stop.wait(interval):
            try:
                occupancy.append((time.perf_counter() - self.started, _cached_fraction(self.backend.get_server_info())))
            except Exception:  # a server that went away: the replay reports its errors elsewhere
                continue


def _room(info: dict[str, Any]) -> int | None:
    """The most tokens (prompt and output) one request may hold on this backend, if it says."""
    engines = list(info.get("workers", {}).values()) or [info]
    rooms = [
        min(e["max_context"], e["kv_cache_tokens"]) for e in engines if "max_context" in e and "kv_cache_tokens" in e
    ]
    return min(rooms) if rooms else None


def _tier_tokens(info: dict[str, Any]) -> tuple[int, int]:
    """Prompt tokens the backend's engines have loaded back from host and disk tiers so far."""
    engines = list(info.get("workers", {}).values()) or [info]
    return sum(e.get("host_hit_tokens", 0) for e in engines), sum(e.get("disk_hit_tokens", 0) for e in engines)


def _cached_fraction(info: dict[str, Any]) -> float:
    engines = list(info.get("workers", {}).values()) or [info]
    total = sum(e.get("pages_total", 0) for e in engines)
    return sum(e.get("pages_cached", 0) for e in engines) / total if total else 0.0
