"""The router: one process that owns the client-facing socket and all text, and spreads requests
over workers.

Clients and workers each talk to a ROUTER socket of its own (``links``). Every loop turn drains
both without blocking on any one peer. A client request is tokenized and admitted on the intake's
thread (``intake``: its cost is the sender's choice, so never the loop's), then goes to the worker
the routing policy picks, as token ids without stop strings; each of that worker's step outputs
brings the request's new tokens, which are detokenized here, checked for stop strings (a match ends
the request and cancels it on the worker) and streamed to the client. Each tenant has its own
in-flight limit, namespace and view of the cache (``tenants``).

A worker that disconnects (its process killed: the socket monitor tells), from which nothing has
arrived (heartbeats included) for ``worker_timeout`` seconds, or that ``radixrt serve`` sees exit is
lost: its requests go to a live worker as their prompt and the tokens generated so far (their
streams go on), or fail with no worker left. A client that leaves, or reads too slowly, loses its requests.
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

from radixrt.outputs import GenerateOutput
from radixrt.server import registry
from radixrt.server.bookkeeping import Counters, Job, router_stats
from radixrt.server.intake import Intake, Prepared, Refused, check_room
from radixrt.server.links import Links
from radixrt.server.metrics import Latencies
from radixrt.server.queries import Queries, StatsRequest, answer
from radixrt.server.registry import WorkerState
from radixrt.server.routing import WorkerView, make_policy
from radixrt.server.tenants import InFlight, Peer, make_peer
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Keys

log = logging.getLogger("radixrt.router")


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
        clients_choose_namespace: bool = False,
    ) -> None:
        self.tokenizer, self.model = tokenizer, model
        self.policy = make_policy(policy, balance_abs, balance_rel)
        self.policy_name = policy
        self.worker_timeout = worker_timeout
        self.clients_choose_namespace = clients_choose_namespace
        self.links = Links(address, worker_address, keys, insecure)
        self.address, self.worker_address = self.links.address, self.links.worker_address
        self.intake = Intake(tokenizer)
        self.links.poller.register(self.intake.wake, zmq.POLLIN)
        self.workers: dict[str, WorkerState] = {}
        self.jobs: dict[str, Job] = {}
        self.clients: dict[bytes, Peer] = {}  # greeted clients
        self.inflight = InFlight(max_inflight_per_client)
        self.pins: dict[tuple[bytes, str], tuple[str, str]] = {}  # (client, request id) -> (worker, request key)
        self.counters = Counters()
        self.latency = Latencies()
        self._keys = (f"r{i}" for i in itertools.count())
        self.queries = Queries()
        self._decode_client = p.decoder(p.ClientMessage).decode
        self._decode_worker = p.decoder(p.FromWorker).decode

    # ---- the loop --------------------------------------------------------------------------

    def poll(self, timeout: float = 0.05) -> None:
        """One turn: wait up to ``timeout`` seconds for messages, handle what came, check liveness.

        A worker is judged by what has arrived from it: its silence counts only once its socket
        has been read to the end, so a turn that took long (however it did) loses no worker."""
        ready = dict(self.links.poller.poll(int(timeout * 1000)))
        try:
            for identity in self.links.worker_departures.gone():
                worker = registry.by_identity(self.workers, identity)
                if worker is not None:
                    self.worker_lost(worker.info.worker, "disconnected")
            for identity in self.links.client_departures.gone():
                self._client_gone(identity)
            if self.links.clients in ready:
                self.links.drain_clients(self._on_client)
            if self.intake.wake in ready:
                self._prepared()
            read_all = self.links.drain_workers(self._on_worker)
            for client, why in list(self.links.cut.items()):
                self._client_gone(client, why)
            while self.links.stalled:
                if worker := registry.by_identity(self.workers, self.links.stalled.pop()):
                    self.worker_lost(worker.info.worker, "its queue is full: it does not read")
            self._check_deadlines(time.monotonic(), liveness=read_all)
        except Exception:  # a bug must not take the router down: log it, go on
            log.exception("error in the router's loop")

    def close(self) -> None:
        for w in self.workers.values():
            self._send_worker(w, p.Shutdown())
        self.intake.close()
        self.links.close()

    # ---- clients ---------------------------------------------------------------------------

    def _on_client(self, client: bytes, frame: bytes | None, user: str | None) -> None:
        try:
            self._handle_client(client, frame, user)
        except Exception as e:  # a bug: the client hears of it, the router goes on
            log.exception("error while handling a client message")
            self._refuse(
                client,
                "internal",
                f"the router failed on this message: {type(e).__name__}: {e}",
                p.request_id_of(frame) if frame else None,
            )

    def _handle_client(self, client: bytes, frame: bytes | None, user: str | None) -> None:
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
            if client not in self.clients:
                self.clients[client] = make_peer(client, user, self.links.admins, self.clients_choose_namespace)
            self._reply(client, p.Welcome(p.PROTOCOL_VERSION, self.model, len(self.workers), self.inflight.limit))
            return
        peer = self.clients.get(client)
        if peer is None:
            self._refuse(
                client, "hello_required", "send hello (with the protocol version) first", getattr(msg, "id", None)
            )
        elif isinstance(msg, p.Generate):
            self._generate(client, peer, msg)
        elif isinstance(msg, p.Abort):
            job = peer.jobs.get(msg.id)
            if job is not None:
                self._cancel(job)
                self._end(job, "abort")
        elif isinstance(msg, p.Unpin):
            self._release(self.pins.pop((client, msg.id), None))
        elif isinstance(msg, p.GetHealth):
            workers, inflight = (sorted(self.workers), len(self.jobs)) if peer.admin else (None, None)
            self._reply(client, p.Health(bool(self.workers), workers, inflight))
        elif isinstance(msg, p.GetTokenizer):
            if self.tokenizer is None:
                self._refuse(client, "invalid_request", "this model ships no tokenizer")
            else:
                self._reply(client, self.intake.tokenizer_reply())
        elif not peer.admin and (isinstance(msg, p.FlushCache) or getattr(msg, "all_namespaces", False)):
            self._refuse(client, "forbidden", "only an admin client may flush the cache or see every namespace")
        elif isinstance(msg, p.GetStats):
            namespaces = None if msg.all_namespaces else [peer.namespace_for(msg.namespace)]
            self._ask_stats(client, prefixes=msg.prefixes, namespaces=namespaces)
        elif isinstance(msg, p.FlushCache):
            self._ask_stats(client, flush=True)

    def _generate(self, client: bytes, peer: Peer, msg: p.Generate) -> None:
        tenant = peer.tenant_for(msg.tenant)
        try:
            check_room(msg, peer.jobs, (client, msg.id) in self.pins, self.inflight.full(tenant), len(self.workers))
        except Refused as e:
            self._refuse(client, e.code, str(e), msg.id)
            return
        key = next(self._keys)
        output = GenerateOutput(key, arrival=time.time())
        namespace = peer.namespace_for(msg.namespace)
        job = Job(key, client, msg.id, namespace, tenant, msg.stream, msg.prompt_logprobs_from, output, msg.pin)
        job.route_key = msg.route_key
        peer.jobs[msg.id] = self.jobs[key] = job
        self.inflight.add(tenant)
        self.intake.start(job, msg, [w.info for w in self.workers.values()])

    def _prepared(self) -> None:
        """Send the requests the intake has prepared (those still wanted) to their workers."""
        for job, outcome in self.intake.done():
            if self.jobs.get(job.key) is not job:
                continue  # aborted, or its client left, meanwhile
            if isinstance(outcome, Prepared) and not self.workers:
                outcome = Refused("unavailable", "no worker is connected")
            if isinstance(outcome, Refused):
                self._forget(job)
                self._refuse(job.client, outcome.code, str(outcome), job.id)
                continue
            job.prompt, job.params, job.text = outcome.prompt, outcome.params, outcome.text
            job.score_next, job.retain = list(outcome.score_next), outcome.retain
            self.counters.requests += 1
            self._dispatch(job)

    # ---- routing ---------------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        """Send ``job`` (its prompt and what it generated so far) to the worker the policy picks."""
        tokens = np.concatenate([job.prompt, np.asarray(job.tokens, dtype=np.int32)]) if job.tokens else job.prompt
        name = self.policy.choose({n: w.view for n, w in self.workers.items()}, tokens, job.namespace, job.route_key)
        worker = self.workers[name]
        job.worker, job.route = name, worker.view.add(tokens, job.namespace)
        worker.jobs.add(job.key)
        self._send_worker(worker, job.submit(tokens))

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

    def _on_worker(self, identity: bytes, frame: bytes | None, user: str | None) -> None:
        worker = registry.by_identity(self.workers, identity)
        try:
            msg = self._decode_worker(frame or b"")
        except msgspec.MsgspecError as e:
            log.error("dropped a bad message from worker %r: %s", identity, e)
            return
        now = time.monotonic()
        if isinstance(msg, p.Register):
            self._register(identity, user, msg, now)
        elif isinstance(msg, p.Heartbeat):
            registry.beat(self.workers, identity, user, msg, now)
        elif worker is None:
            self.links.to_worker(identity, p.Shutdown())  # a worker this router has given up on
        elif isinstance(msg, p.StepOutput):
            worker.last_seen = now
            self._on_step(worker, msg)
        elif isinstance(msg, p.WorkerStats):
            worker.last_seen = now
            for query in self.queries.reply(worker.info.worker, msg):
                self._answer(query)

    def _register(self, identity: bytes, user: str | None, msg: p.Register, now: float) -> None:
        problem = registry.registration_problem(msg, identity, user, self.workers)
        if problem is not None:
            log.error("refused worker %s: %s", msg.worker, problem)
            self.links.to_worker(identity, p.Shutdown())
            return
        if msg.worker in self.workers:
            self.worker_lost(msg.worker, "registered again", shutdown=False)  # the newcomer holds its identity now
        self.workers[msg.worker] = WorkerState(msg, identity, WorkerView(msg.page_size), now, user)
        pages = f"{msg.num_pages} KV pages of {msg.page_size} tokens"
        log.info("worker %s joined (pid %d, %s, %s)", msg.worker, msg.pid, msg.model, pages)

    def worker_lost(self, name: str, why: str, shutdown: bool = True) -> None:
        """Stop using worker ``name`` (and tell it to stop, in case it is only slow); its requests
        go on on another worker, or fail if none is left."""
        worker = self.workers.pop(name, None)
        if worker is None:
            return
        self.counters.workers_lost += 1
        log.warning("worker %s lost (%s); %d requests in flight on it", name, why, len(worker.jobs))
        if shutdown:
            self.links.to_worker(worker.identity, p.Shutdown())
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
        vocab = worker.info.vocab_size
        if any(t < 0 or t >= vocab for out in msg.outputs for t in out.token_ids):
            self.worker_lost(worker.info.worker, "it sent token ids outside its vocabulary")
            return
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
        self._forget(job)
        self.counters.finished += reason in ("stop", "length")
        if reason in ("stop", "length"):
            self.counters.output_tokens += len(job.tokens)
            self.latency.observe(result.arrival, result.token_times, time.time())
        self.counters.aborted += reason == "abort"
        self.counters.failed += reason == "error"
        self._reply(job.client, p.to_wire(p.Finished, result, id=job.id, worker=worker))

    def _forget(self, job: Job) -> None:
        """Take ``job`` off every list (and off its tenant's count)."""
        self._unroute(job)
        if self.jobs.pop(job.key, None) is not None:
            self.inflight.remove(job.tenant)
        peer = self.clients.get(job.client)
        if peer is not None:
            peer.jobs.pop(job.id, None)

    def _release(self, pin: tuple[str, str] | None) -> None:
        worker = self.workers.get(pin[0]) if pin is not None else None
        if worker is not None:
            self._send_worker(worker, p.Release([pin[1]]))

    def _client_gone(self, client: bytes, why: str = "left") -> None:
        """Forget ``client`` (it left, or is cut off for ``why``): cancel its requests, release its pins."""
        self.links.cut.pop(client, None)
        for pin in [pin for pin in self.pins if pin[0] == client]:
            self._release(self.pins.pop(pin))
        peer = self.clients.get(client)
        if peer is None:
            return
        self.counters.clients_lost += 1
        jobs = list(peer.jobs.values())
        for job in jobs:
            self._cancel(job)
            self._forget(job)
        del self.clients[client]
        if jobs or why != "left":
            log.info("a client %s with %d requests in flight: cancelled them", why, len(jobs))

    # ---- stats and deadlines ---------------------------------------------------------------

    def _ask_stats(
        self, client: bytes, flush: bool = False, prefixes: bool = False, namespaces: list[str | None] | None = None
    ) -> None:
        query_id, message = self.queries.ask(client, self.workers, flush, prefixes, namespaces)
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

    def _check_deadlines(self, now: float, liveness: bool) -> None:
        for name, quiet in registry.silent(self.workers, now, self.worker_timeout) if liveness else ():
            self.worker_lost(name, f"silent for {quiet:.1f} s")
        for query in self.queries.due(now):
            self._answer(query)

    # ---- sending ---------------------------------------------------------------------------

    def _send_worker(self, worker: WorkerState, msg: p.Message) -> None:
        self.links.to_worker(worker.identity, msg)

    def _reply(self, client: bytes, msg: p.Message | bytes) -> None:
        self.links.to_client(client, msg)

    def _refuse(self, client: bytes, code: str, message: str, request_id: str | None = None) -> None:
        self.counters.refused += code != "bad_message"
        self.counters.bad_frames += code == "bad_message"
        self._reply(client, p.Error(code, message, request_id))
