"""The router: one process that owns the client-facing socket and all text, and spreads requests
over workers.

Clients and workers each talk to a ROUTER socket of its own. Every loop turn drains both without
blocking on any one peer. A client request is tokenized here (prompt text or chat messages), then
goes to the worker the routing policy picks, as token ids without stop strings; each of that
worker's step outputs brings the request's new tokens, which are detokenized here, checked for stop
strings (a match ends the request and cancels it on the worker) and streamed to the client.

A worker that disconnects (its process killed: the socket monitor tells), that sends nothing
(heartbeats included) for ``worker_timeout`` seconds, or that ``radixrt serve`` sees exit is lost:
its requests go to a live worker as their prompt followed by the tokens generated so far, so their
streams go on where they stopped; with no worker left they fail. A client that disconnects has its requests cancelled.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from typing import Any

import msgspec
import numpy as np
import zmq

from radixrt.server.bookkeeping import Counters, Job, WorkerState, router_stats
from radixrt.server.intake import Intake, Refused, check_room
from radixrt.server.metrics import Latencies
from radixrt.server.queries import Queries, StatsRequest, answer
from radixrt.server.routing import WorkerView, make_policy
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Authenticator, Departures, Keys, check_exposure, server_socket

log = logging.getLogger("radixrt.router")

DRAIN_BATCH = 256  # messages taken from one socket per turn, so that neither side starves the other


class Router:
    def __init__(
        self,
        tokenizer: Any,
        address: str = "tcp://127.0.0.1:5555",
        worker_address: str = "tcp://127.0.0.1:0",
        *,
        model: str = "",
        keys: Keys | None = None,
        insecure: bool = False,
        policy: str = "cache_aware",
        max_inflight_per_client: int = 1024,
        worker_timeout: float = 2.0,
        balance_abs: int = 2,
        balance_rel: float = 1.5,
    ) -> None:
        for a in (address, worker_address):
            check_exposure(a, keys, insecure)
        self.tokenizer, self.model = tokenizer, model
        self.policy = make_policy(policy, balance_abs, balance_rel)
        self.policy_name = policy
        self.max_inflight, self.worker_timeout = max_inflight_per_client, worker_timeout
        self.context = zmq.Context()
        self._auth = Authenticator(self.context, keys) if keys is not None else None
        self.clients_socket, self.address = server_socket(self.context, address, keys)
        self.workers_socket, self.worker_address = server_socket(self.context, worker_address, keys)
        self.workers_socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes its name back
        self.client_departures, self.worker_departures = (
            Departures(self.clients_socket),
            Departures(self.workers_socket),
        )
        self.poller = zmq.Poller()
        for sock in (
            self.clients_socket,
            self.workers_socket,
            self.client_departures.monitor,
            self.worker_departures.monitor,
        ):
            self.poller.register(sock, zmq.POLLIN)
        self.workers: dict[str, WorkerState] = {}
        self.jobs: dict[str, Job] = {}
        self.clients: dict[bytes, dict[str, Job]] = {}  # greeted clients -> their jobs by client id
        self.pins: dict[tuple[bytes, str], tuple[str, str]] = {}  # (client, request id) -> (worker, request key)
        self.counters = Counters()
        self.latency = Latencies()
        self._keys = (f"r{i}" for i in itertools.count())
        self.queries = Queries()
        self._decode_client = p.decoder(p.ClientMessage).decode
        self.intake = Intake(tokenizer)
        self._decode_worker = p.decoder(p.FromWorker).decode

    # ---- the loop --------------------------------------------------------------------------

    def poll(self, timeout: float = 0.05) -> None:
        """One turn: wait up to ``timeout`` seconds for messages, handle what came, check liveness."""
        ready = dict(self.poller.poll(int(timeout * 1000)))
        for identity in self.worker_departures.gone():
            worker = self._worker_by_identity(identity)
            if worker is not None:
                self.worker_lost(worker.info.worker, "disconnected")
        for identity in self.client_departures.gone():
            self._client_gone(identity)
        if self.workers_socket in ready:
            self._drain(self.workers_socket, self.worker_departures, self._on_worker)
        if self.clients_socket in ready:
            self._drain(self.clients_socket, self.client_departures, self._on_client)
        self._check_deadlines(time.monotonic())

    def close(self) -> None:
        for w in self.workers.values():
            self._send_worker(w, p.Shutdown())
        self.client_departures.close()
        self.worker_departures.close()
        self.clients_socket.close(linger=0)
        self.workers_socket.close(linger=100)
        if self._auth is not None:
            self._auth.stop()
        self.context.term()

    def _drain(self, sock: zmq.Socket, departures: Departures, handle) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            departures.seen(identity, frames[-1])
            try:
                handle(identity, frames[1].bytes if len(frames) == 2 else None)
            except Exception:  # a bug must not take the router down: log it, go on
                log.exception("error while handling a message")

    # ---- clients ---------------------------------------------------------------------------

    def _on_client(self, client: bytes, frame: bytes | None) -> None:
        try:
            self._handle_client(client, frame)
        except Exception as e:  # a bug: the client hears of it, the router goes on
            log.exception("error while handling a client message")
            self._refuse(
                client,
                "internal",
                f"the router failed on this message: {type(e).__name__}: {e}",
                p.request_id_of(frame) if frame else None,
            )

    def _handle_client(self, client: bytes, frame: bytes | None) -> None:
        if frame is None:
            self._refuse(client, "bad_message", "a message is exactly one frame")
            return
        try:
            msg = self._decode_client(frame)
        except msgspec.MsgspecError as e:
            self._refuse(client, "bad_message", str(e), p.request_id_of(frame))
            return
        if isinstance(msg, p.Hello):
            if msg.version != p.PROTOCOL_VERSION:
                self._refuse(
                    client, "version", f"this server speaks protocol version {p.PROTOCOL_VERSION}, not {msg.version}"
                )
                return
            self.clients.setdefault(client, {})
            self._reply(client, p.Welcome(p.PROTOCOL_VERSION, self.model, len(self.workers), self.max_inflight))
        elif client not in self.clients:
            self._refuse(
                client, "hello_required", "send hello (with the protocol version) first", getattr(msg, "id", None)
            )
        elif isinstance(msg, p.Generate):
            self._generate(client, msg)
        elif isinstance(msg, p.Abort):
            job = self.clients[client].get(msg.id)
            if job is not None:
                self._cancel(job)
                self._end(job, "abort")
        elif isinstance(msg, p.Unpin):
            self._release(self.pins.pop((client, msg.id), None))
        elif isinstance(msg, p.GetStats):
            self._ask_stats(client, prefixes=msg.prefixes)
        elif isinstance(msg, p.FlushCache):
            self._ask_stats(client, flush=True)
        elif isinstance(msg, p.GetTokenizer):
            if self.tokenizer is None:
                self._refuse(client, "invalid_request", "this model ships no tokenizer")
            else:
                self._reply(client, p.TokenizerFiles(self.intake.tokenizer_files()))
        elif isinstance(msg, p.GetHealth):
            self._reply(client, p.Health(bool(self.workers), sorted(self.workers), len(self.jobs)))

    def _generate(self, client: bytes, msg: p.Generate) -> None:
        jobs = self.clients[client]
        try:
            check_room(msg, jobs, (client, msg.id) in self.pins, self.max_inflight, len(self.workers))
            job = self.intake.job(client, msg, next(self._keys), [w.info for w in self.workers.values()])
        except Refused as e:
            self._refuse(client, e.code, str(e), msg.id)
            return
        jobs[msg.id] = self.jobs[job.key] = job
        self.counters.requests += 1
        self._dispatch(job)

    # ---- routing ---------------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        """Send ``job`` (its prompt and what it generated so far) to the worker the policy picks."""
        tokens = np.concatenate([job.prompt, np.asarray(job.tokens, dtype=np.int32)]) if job.tokens else job.prompt
        name = self.policy.choose({n: w.view for n, w in self.workers.items()}, tokens, job.namespace)
        worker = self.workers[name]
        job.worker, job.route = name, worker.view.add(tokens, job.namespace)
        worker.jobs.add(job.key)
        params = p.wire_sampling(job.params, stop=[], max_new_tokens=job.params.max_new_tokens - len(job.tokens))
        self._send_worker(
            worker,
            p.Submit(
                job.key,
                tokens.tolist(),
                params,
                job.namespace,
                job.prompt_logprobs_from,
                len(job.tokens),
                job.pin,
                job.score_next,
            ),
        )

    def _unroute(self, job: Job) -> None:
        worker = self.workers.get(job.worker) if job.worker else None
        if worker is not None and job.key in worker.jobs:
            worker.jobs.discard(job.key)
            worker.view.remove(job.route)
        job.worker = job.route = None

    def _cancel(self, job: Job) -> None:
        worker = self.workers.get(job.worker) if job.worker else None
        if worker is not None:
            self._send_worker(worker, p.Cancel([job.key]))
            if job.pin:  # in case it finished there, and pinned, before the cancel arrives
                self._send_worker(worker, p.Release([job.key]))

    # ---- workers ---------------------------------------------------------------------------

    def _on_worker(self, identity: bytes, frame: bytes | None) -> None:
        worker = self._worker_by_identity(identity)
        try:
            msg = self._decode_worker(frame or b"")
        except msgspec.MsgspecError as e:
            log.error("dropped a bad message from worker %r: %s", identity, e)
            return
        now = time.monotonic()
        if isinstance(msg, p.Register):
            self._register(identity, msg, now)
        elif isinstance(msg, p.Heartbeat):
            if msg.worker in self.workers:
                self.workers[msg.worker].last_seen = now
        elif worker is None:
            self._send(self.workers_socket, identity, p.Shutdown())  # a worker this router has given up on
        elif isinstance(msg, p.StepOutput):
            worker.last_seen = now
            self._on_step(worker, msg)
        elif isinstance(msg, p.WorkerStats):
            worker.last_seen = now
            for query in self.queries.reply(worker.info.worker, msg.query, msg.stats):
                self._answer(query)

    def _register(self, identity: bytes, msg: p.Register, now: float) -> None:
        problem = None
        if msg.version != p.PROTOCOL_VERSION:
            problem = f"it speaks protocol version {msg.version}, not {p.PROTOCOL_VERSION}"
        elif self.workers and msg.worker not in self.workers:
            first = next(iter(self.workers.values())).info
            if msg.vocab_size != first.vocab_size:
                problem = (
                    f"its model's vocabulary ({msg.vocab_size}) differs from the other workers' ({first.vocab_size})"
                )
        if problem is not None:
            log.error("refused worker %s: %s", msg.worker, problem)
            self._send(self.workers_socket, identity, p.Shutdown())
            return
        if msg.worker in self.workers:
            self.worker_lost(msg.worker, "registered again", shutdown=False)  # the newcomer holds its identity now
        self.workers[msg.worker] = WorkerState(msg, identity, WorkerView(msg.page_size), now)
        log.info(
            "worker %s joined (pid %d, %s, %d KV pages of %d tokens)",
            msg.worker,
            msg.pid,
            msg.model,
            msg.num_pages,
            msg.page_size,
        )

    def worker_lost(self, name: str, why: str, shutdown: bool = True) -> None:
        """Stop using worker ``name`` (and tell it to stop, in case it is only slow); its requests
        go on on another worker, or fail if none is left."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        self.counters.workers_lost += 1
        log.warning("worker %s lost (%s); %d requests in flight on it", name, why, len(worker.jobs))
        if shutdown:
            self._send(self.workers_socket, worker.identity, p.Shutdown())
        for key in sorted(worker.jobs, key=lambda k: int(k[1:])):
            job = self.jobs[key]
            job.worker = job.route = None
            if self.workers:
                job.resubmits += 1
                self.counters.resubmitted += 1
                self._dispatch(job)
            else:
                self._end(job, "error", error=f"worker {name} was lost ({why}) and no worker is left")
        for pin, (holder, _) in list(self.pins.items()):
            if holder == name:
                del self.pins[pin]
        for query in self.queries.forget(name):
            self._answer(query)

    def _on_step(self, worker: WorkerState, msg: p.StepOutput) -> None:
        worker.view.apply(msg.events)
        deltas: dict[bytes, list[p.Delta]] = defaultdict(list)
        for out in msg.outputs:
            job = self.jobs.get(out.id)
            if job is None or job.worker != worker.info.worker:
                continue  # it ended here already (a stop string, an abort) or moved on
            stopped = job.take(out)
            if out.finished:
                self._end(job, out.finish_reason or "error", out)
            elif stopped:
                self._cancel(job)
                self._end(job, "stop")
            elif job.stream:
                deltas[job.client].append(job.delta(out))
        for client, items in deltas.items():
            self.counters.deltas += len(items)
            self._reply(client, p.Deltas(items))

    def _end(self, job: Job, reason: str, out: p.TokenOutput | None = None, error: str | None = None) -> None:
        """Tell the client how ``job`` ended and forget it (cancelling it on the worker is the caller's)."""
        result = job.result(reason, out, error)
        reason, worker = result.finish_reason, job.worker or ""
        if job.pin and worker and out is not None and out.finish_reason in ("stop", "length"):
            self.pins[job.client, job.id] = (worker, job.key)
        self._unroute(job)
        self.jobs.pop(job.key, None)
        self.clients.get(job.client, {}).pop(job.id, None)
        self.counters.finished += reason in ("stop", "length")
        if reason in ("stop", "length"):
            self.counters.output_tokens += len(job.tokens)
            self.latency.observe(result.arrival, result.token_times, time.time())
        self.counters.aborted += reason == "abort"
        self.counters.failed += reason == "error"
        self._reply(job.client, p.to_wire(p.Finished, result, id=job.id, worker=worker))

    def _release(self, pin: tuple[str, str] | None) -> None:
        worker = self.workers.get(pin[0]) if pin is not None else None
        if worker is not None:
            self._send_worker(worker, p.Release([pin[1]]))

    def _client_gone(self, client: bytes) -> None:
        for pin in [pin for pin in self.pins if pin[0] == client]:
            self._release(self.pins.pop(pin))
        jobs = self.clients.pop(client, None)
        if jobs is None:
            return
        self.counters.clients_lost += 1
        for job in list(jobs.values()):
            self._cancel(job)
            self._unroute(job)
            self.jobs.pop(job.key, None)
        if jobs:
            log.info("a client left with %d requests in flight: cancelled them", len(jobs))

    # ---- stats and deadlines ---------------------------------------------------------------

    def _ask_stats(self, client: bytes, flush: bool = False, prefixes: bool = False) -> None:
        query_id, message = self.queries.ask(client, self.workers, flush, prefixes)
        for w in self.workers.values():
            self._send_worker(w, message)
        if not self.workers:
            self._answer(self.queries.open.pop(query_id))

    def _answer(self, query: StatsRequest) -> None:
        router = {
            **router_stats(self.counters, query.replies),
            "inflight": len(self.jobs),
            "clients": len(self.clients),
            "pins": len(self.pins),
            "policy": self.policy_name,
            "latency": self.latency.to_dict(),
            "load": {n: w.view.load for n, w in self.workers.items()},
        }
        self._reply(query.client, answer(query, router, self.tokenizer))

    def _check_deadlines(self, now: float) -> None:
        for name, w in list(self.workers.items()):
            if now - w.last_seen > self.worker_timeout:
                self.worker_lost(name, f"silent for {now - w.last_seen:.1f} s")
        for query in self.queries.due(now):
            self._answer(query)

    # ---- sending ---------------------------------------------------------------------------

    def _worker_by_identity(self, identity: bytes) -> WorkerState | None:
        w = self.workers.get(identity.decode(errors="replace"))
        return w if w is not None and w.identity == identity else None

    def _send_worker(self, worker: WorkerState, msg: p.Message) -> None:
        self._send(self.workers_socket, worker.identity, msg)

    def _reply(self, client: bytes, msg: p.Message) -> None:
        self._send(self.clients_socket, client, msg)

    def _refuse(self, client: bytes, code: str, message: str, request_id: str | None = None) -> None:
        self.counters.refused += code != "bad_message"
        self.counters.bad_frames += code == "bad_message"
        self._reply(client, p.Error(code, message, request_id))

    @staticmethod
    def _send(sock: zmq.Socket, identity: bytes, msg: p.Message) -> None:
        try:
            sock.send_multipart([identity, p.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the peer is gone or its queue is full: nothing to do but note it
            log.warning("could not send %s: %s", type(msg).__name__, e)
