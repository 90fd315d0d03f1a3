"""A worker process: the engine loop behind a socket connected to the router.

Between steps it drains its socket without blocking (new requests, cancellations, stats queries),
then runs ``engine.step()`` and sends one ``StepOutput`` with every request's new tokens and the
radix cache's changes of that step, so that the router's copy of the cache is exact up to one step.
Workers deal in token ids only. A thread sends heartbeats on a socket of its own, so that a long
step does not look like a dead worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import msgspec
import numpy as np
import zmq

from radixrt.engine import Engine
from radixrt.outputs import RequestOutput
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Keys, client_socket

HEARTBEAT_INTERVAL = 0.25
IDLE_POLL_MS = 50


class Worker:
    def __init__(
        self, engine: Engine, address: str, name: str, keys: Keys | None = None, parent_pid: int | None = None
    ) -> None:
        self.engine, self.address, self.name, self.keys = engine, address, name, keys
        self.parent_pid = parent_pid
        self.stopping = threading.Event()
        self._decode = p.decoder(p.ToWorker).decode
        self._clock = time.time() - time.perf_counter()  # perf_counter -> Unix time
        self._replies: list[p.TokenOutput] = []  # refused submissions, reported with the next step
        engine.cache.events = []

    def run(self) -> None:
        context = zmq.Context()
        sock = client_socket(context, self.address, self.keys, identity=self.name.encode())
        beat = threading.Thread(target=self._heartbeats, args=(context,), daemon=True)
        try:
            engine = self.engine
            sock.send(
                p.encode(
                    p.Register(
                        p.PROTOCOL_VERSION,
                        self.name,
                        os.getpid(),
                        engine.model_path.name,
                        engine.vocab_size,
                        engine.max_context,
                        engine.pool.page_size,
                        engine.pool.num_pages,
                    )
                )
            )
            beat.start()
            while not self.stopping.is_set() and self._parent_alive():
                if sock.poll(0 if engine.has_work() else IDLE_POLL_MS):
                    self._drain(sock)
                outputs = engine.step() if engine.has_work() else []
                events = engine.cache.events
                engine.cache.events = []
                if outputs or events or self._replies:
                    sock.send(p.encode(self._step_output(outputs, events)))
        finally:
            self.stopping.set()
            if beat.is_alive():
                beat.join(timeout=1)
            sock.close(linger=0)
            context.term()

    def _drain(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = self._decode(frame)
            except msgspec.MsgspecError as e:  # the router never sends this: say so, go on
                print(f"radixrt worker {self.name}: dropped a bad message: {e}", file=sys.stderr)
                continue
            if isinstance(msg, p.Submit):
                self._submit(msg)
            elif isinstance(msg, p.Cancel):
                for rid in msg.ids:
                    self.engine.abort(rid)
            elif isinstance(msg, p.Release):
                for rid in msg.ids:
                    self.engine.unpin(rid)
            elif isinstance(msg, p.StatsQuery):
                top = self.engine.cache.top_prefixes(namespaces=msg.namespaces) if msg.prefixes else []
                prefixes = [p.Prefix(**prefix) for prefix in top]
                sock.send(p.encode(p.WorkerStats(msg.query, self.engine.stats(), prefixes)))
            elif isinstance(msg, p.Flush):
                sock.send(p.encode(p.WorkerStats(msg.query, {"flushed": self.engine.flush_cache()})))
            elif isinstance(msg, p.Shutdown):
                self.stopping.set()

    def _submit(self, msg: p.Submit) -> None:
        try:
            self.engine.add_request(
                np.asarray(msg.input_ids, dtype=np.int32),
                p.sampling_params(msg.params),
                request_id=msg.id,
                namespace=msg.namespace,
                prompt_logprobs_from=msg.prompt_logprobs_from,
                resumed=msg.resumed,
                pin=msg.pin,
                score_next=msg.score_next,
                tenant=msg.tenant,
                retain=msg.retain,
            )
        except (ValueError, TypeError) as e:
            self._replies.append(p.TokenOutput(id=msg.id, finished=True, finish_reason="error", error=str(e)))

    def _step_output(self, outputs: list[RequestOutput], events: list) -> p.StepOutput:
        wire = [self._token_output(o) for o in outputs] + self._replies
        self._replies = []
        return p.StepOutput(wire, [p.WireCacheEvent(*e) for e in events])

    def _token_output(self, out: RequestOutput) -> p.TokenOutput:
        return p.to_wire(
            p.TokenOutput,
            out,
            token_times=[t + self._clock for t in out.token_times],
            matched_stop=out.matched_stop if isinstance(out.matched_stop, int) else None,
        )

    def _heartbeats(self, context: zmq.Context) -> None:
        sock = client_socket(context, self.address, self.keys, identity=f"{self.name}/heartbeat".encode())
        beat = p.encode(p.Heartbeat(self.name))
        try:
            while not self.stopping.wait(HEARTBEAT_INTERVAL):
                sock.send(beat)
        finally:
            sock.close(linger=0)

    def _parent_alive(self) -> bool:
        """A worker that ``radixrt serve`` started ends with it, even if it was killed."""
        return self.parent_pid is None or os.getppid() == self.parent_pid


def run_worker(
    address: str, name: str, engine: Engine, keys: Keys | None = None, parent_pid: int | None = None
) -> None:
    worker = Worker(engine, address, name, keys, parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    try:
        worker.run()
    finally:
        engine.close()  # the disk tier's queued pages are written before the process ends
