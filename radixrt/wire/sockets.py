"""ZeroMQ sockets as the server and its clients set them up: message size and queue limits,
disconnect notices, and CURVE encryption with authentication by role (client, admin, worker) for
anything beyond loopback. Without keys, anyone who can reach an address is let in as an admin
client or a worker: that is why a non-loopback address needs keys (or ``--insecure``)."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from radixrt.wire.protocol import MAX_MESSAGE_BYTES

SEND_QUEUE = 1_000
"""Messages queued for one peer before it counts as too slow (the router then cuts it off)."""
RECEIVE_QUEUE = 10_000
"""Messages queued from one peer before ZeroMQ stops reading its connection (its sends then wait)."""


ROLES = ("client", "admin", "worker")
"""Who a key lets in: a client (a tenant: its own namespace, no cache-wide calls), an admin client
(any namespace and tenant, every tenant's figures, flushing; the HTTP front end is one) or a worker."""


@dataclass(frozen=True)
class Keys:
    """A directory that ``radixrt keys`` wrote: the server's key pair (``server.key``,
    ``server.key_secret``), one key pair per role (``client``, ``admin``, ``worker``: ``ROLE.key``,
    ``ROLE.key_secret``), and more public keys let in under each role in ``clients/``,
    ``admins/`` and ``workers/`` (read when the server starts). A peer needs ``server.key`` and the
    secret of its own pair: ``pair`` names the one this process uses."""

    directory: Path
    pair: str = "client"

    @classmethod
    def load(cls, directory: str | Path, pair: str = "client") -> Keys:
        directory = Path(directory)
        if pair not in ROLES:
            raise ValueError(f"no key pair is called {pair!r}: one of {', '.join(ROLES)}")
        if not (directory / "server.key").exists():
            raise ValueError(
                f"{directory / 'server.key'} is missing: `radixrt keys {directory}` writes a key directory"
            )
        return cls(directory, pair)

    def server_pair(self) -> tuple[bytes, bytes]:
        return self._load("server.key_secret")

    def client_pair(self) -> tuple[bytes, bytes]:
        """This process's own pair (``pair``)."""
        return self._load(f"{self.pair}.key_secret")

    def server_public(self) -> bytes:
        return self._load("server.key")[0]

    def public_keys(self, role: str) -> set[bytes]:
        """The z85 public keys let in as ``role``: its pair's and those in its folder."""
        paths = [self.directory / f"{role}.key", *sorted((self.directory / f"{role}s").glob("*.key"))]
        return {zmq.auth.load_certificate(path)[0] for path in paths if path.exists()}

    def _load(self, name: str) -> tuple[bytes, bytes]:
        path = self.directory / name
        if not path.exists():
            raise ValueError(
                f"{path} is missing: `radixrt keys {self.directory}` writes a key directory (and adds a "
                "missing pair to an existing one)"
            )
        return zmq.auth.load_certificate(path)


def write_keys(directory: str | Path) -> Keys:
    """Write the server's key pair and one pair per role that the directory lacks, and the
    folders for more public keys. Secrets are never readable by others, not even for a moment:
    the files are created under a umask that keeps them private."""
    directory = Path(directory)
    old = os.umask(0o077)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("server", *ROLES):
            if not (directory / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(directory, name)
        for role in ROLES:
            (directory / f"{role}s").mkdir(exist_ok=True)
    finally:
        os.umask(old)
    directory.chmod(0o700)
    return Keys(directory)


def is_loopback(address: str) -> bool:
    """Whether ``address`` (a ZeroMQ endpoint) can only be reached from this machine."""
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from elsewhere


def check_exposure(address: str, keys: Keys | None, insecure: bool) -> None:
    if keys is None and not insecure and not is_loopback(address):
        raise ValueError(
            f"{address} is reachable from other machines: give --keys DIR (written by `radixrt keys DIR`) "
            "so that only clients holding a key get in, or --insecure to serve it unencrypted"
        )


class _Allowed:
    """The public keys one ZAP domain lets in (pyzmq's credentials provider)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class Authenticator:
    """CURVE authentication for one context (ZeroMQ's ZAP handler, in a thread): a socket set up
    with ``zap_domain="clients"`` lets in client and admin keys, one with ``"workers"`` worker keys.
    A message's ``User-Id`` is then its sender's z85 public key."""

    def __init__(self, context: zmq.Context, keys: Keys) -> None:
        self.admins = keys.public_keys("admin")
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback("clients", _Allowed(keys.public_keys("client") | self.admins))
        self._auth.configure_curve_callback("workers", _Allowed(keys.public_keys("worker")))

    def stop(self) -> None:
        self._auth.stop()


def server_socket(
    context: zmq.Context, address: str, keys: Keys | None, domain: str = "clients"
) -> tuple[zmq.Socket, str]:
    """A ROUTER socket bound to ``address`` (``tcp://HOST:0`` picks a free port) that lets in the
    keys of ``domain`` (see ``Authenticator``); returns it and the address it is bound to.

    Sending never blocks: a message to a peer that has gone, or whose queue holds ``SEND_QUEUE``
    messages it has not read, raises ``zmq.ZMQError`` for the router to deal with."""
    sock = context.socket(zmq.ROUTER)
    _common(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys.server_pair()
        sock.curve_server = True
        sock.zap_domain = domain.encode()
    sock.bind(address)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


class Departures:
    """Which peers of a ROUTER socket have disconnected (a process killed, a client closed).

    ZeroMQ hides connections behind identities; its socket monitor reports a disconnect by file
    descriptor, and each received message can tell the descriptor it came in on. ``seen`` notes
    the descriptor of every message, ``gone`` turns disconnect events into identities."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._by_fd: dict[int, bytes] = {}

    def seen(self, identity: bytes, frame: zmq.Frame) -> None:
        self._by_fd[frame.get(zmq.SRCFD)] = identity

    def gone(self) -> list[bytes]:
        """Identities whose connection closed since the last call. A closed descriptor is reported
        before the system can hand it to a new connection, so a reused one is never confused."""
        left = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            identity = self._by_fd.pop(event["value"], None)
            if identity is not None:
                left.append(identity)
        return left

    def close(self) -> None:
        self.monitor.close(linger=0)


def client_socket(context: zmq.Context, address: str, keys: Keys | None, identity: bytes | None = None) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    _common(sock)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys.client_pair()
        sock.curve_serverkey = keys.server_public()
    sock.connect(address)
    return sock


def _common(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
    sock.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
