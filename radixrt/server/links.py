"""The router's two ROUTER sockets, one for clients and one for workers: receiving in bounded
batches, sending without ever blocking, and noticing peers that leave or read too slowly.

A message for a peer that has gone, or whose queue is full (``SEND_QUEUE`` messages unread), is
not sent; a client in that state is marked to be cut off (``cut``), and a worker that does not
read (its queue full) to be dropped (``stalled``), which the router does at the end of its turn.
With keys, every received message comes with its sender's public key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from radixrt.wire import protocol as p
from radixrt.wire.sockets import Authenticator, Departures, Keys, check_exposure, server_socket

log = logging.getLogger("radixrt.router")

DRAIN_BATCH = 256  # messages taken from one socket per turn, so that neither side starves the other
WORKER_SEND_QUEUE = 100_000  # a worker reads its queue at every step: only a stuck one fills this

Handler = Callable[[bytes, bytes | None, str | None], None]


class Links:
    def __init__(self, address: str, worker_address: str, keys: Keys | None, insecure: bool) -> None:
        for a in (address, worker_address):
            check_exposure(a, keys, insecure)
        self.context = zmq.Context()
        self.auth = Authenticator(self.context, keys) if keys is not None else None
        self.clients, self.address = server_socket(self.context, address, keys, "clients")
        self.workers, self.worker_address = server_socket(self.context, worker_address, keys, "workers")
        self.workers.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes its name back
        self.workers.setsockopt(zmq.SNDHWM, WORKER_SEND_QUEUE)  # for every worker that connects
        self.client_departures, self.worker_departures = Departures(self.clients), Departures(self.workers)
        self.poller = zmq.Poller()
        for sock in (self.clients, self.workers, self.client_departures.monitor, self.worker_departures.monitor):
            self.poller.register(sock, zmq.POLLIN)
        self.cut: dict[bytes, str] = {}  # clients to cut off at the end of the turn, and why
        self.stalled: set[bytes] = set()  # workers whose queue is full

    @property
    def admins(self) -> set[bytes] | None:
        """The admin role's public keys; None without keys (every client is an admin)."""
        return self.auth.admins if self.auth is not None else None

    def drain_clients(self, handle: Handler) -> bool:
        return self._drain(self.clients, self.client_departures, handle)

    def drain_workers(self, handle: Handler) -> bool:
        return self._drain(self.workers, self.worker_departures, handle)

    def to_client(self, client: bytes, msg: p.Message | bytes) -> None:
        """Send ``msg`` (or a message encoded already: a large reply encoded once is queued for
        many peers without a copy each)."""
        if client not in self.cut and (error := self._send(self.clients, client, msg)) is not None:
            self.cut[client] = "that reads too slowly was cut off" if error == zmq.EAGAIN else "left"

    def to_worker(self, identity: bytes, msg: p.Message) -> None:
        if self._send(self.workers, identity, msg) == zmq.EAGAIN:
            self.stalled.add(identity)

    def close(self) -> None:
        self.client_departures.close()
        self.worker_departures.close()
        self.clients.close(linger=0)
        self.workers.close(linger=100)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()

    def _drain(self, sock: zmq.Socket, departures: Departures, handle: Handler) -> bool:
        """Handle up to ``DRAIN_BATCH`` messages from ``sock``; whether it was read to the end."""
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            identity = frames[0].bytes
            departures.seen(identity, frames[-1])
            user = frames[-1].get("User-Id") if self.auth is not None else None
            try:
                handle(identity, frames[1].bytes if len(frames) == 2 else None, user)
            except Exception:  # a bug must not take the router down: log it, go on
                log.exception("error while handling a message")
        return False

    @staticmethod
    def _send(sock: zmq.Socket, identity: bytes, msg: p.Message | bytes) -> int | None:
        """Send without blocking; the error number if the peer is gone or its queue is full."""
        try:
            sock.send_multipart([identity, msg if isinstance(msg, bytes) else p.encode(msg)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as e:
            log.debug("could not send %s: %s", type(msg).__name__, e)
            return e.errno
        return None
