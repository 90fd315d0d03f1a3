"""ZeroMQ sockets as the server and its clients set them up: message size limit, disconnect
notices, and CURVE encryption with client authentication for anything beyond loopback."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from radixrt.wire.protocol import MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class Keys:
    """A directory that ``radixrt keys`` wrote: the server's key pair (``server.key``,
    ``server.key_secret``), a client key pair (``client.key``, ``client.key_secret``), and the
    public keys of every client the server lets in (``*.key``, read when the server starts). A
    client needs only ``server.key`` and its own ``client.key_secret``."""

    directory: Path

    @classmethod
    def load(cls, directory: str | Path) -> Keys:
        directory = Path(directory)
        if not (directory / "server.key").exists():
            raise ValueError(
                f"{directory / 'server.key'} is missing: `radixrt keys {directory}` writes a key directory"
            )
        return cls(directory)

    def server_pair(self) -> tuple[bytes, bytes]:
        return self._load("server.key_secret")

    def client_pair(self) -> tuple[bytes, bytes]:
        return self._load("client.key_secret")

    def server_public(self) -> bytes:
        return self._load("server.key")[0]

    def _load(self, name: str) -> tuple[bytes, bytes]:
        path = self.directory / name
        if not path.exists():
            raise ValueError(f"{path} is missing: `radixrt keys {self.directory}` writes a key directory")
        return zmq.auth.load_certificate(path)


def write_keys(directory: str | Path) -> Keys:
    """Write a server key pair and a client key pair. Give trusted clients ``server.key`` and the
    client pair; more clients' public keys (``*.key``) dropped into the directory are let in from
    the server's next start."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        if not (directory / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(directory, name)
    for secret in directory.glob("*.key_secret"):
        secret.chmod(0o600)
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


class Authenticator:
    """CURVE client authentication for one context (ZeroMQ's ZAP handler, in a thread)."""

    def __init__(self, context: zmq.Context, keys: Keys) -> None:
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(keys.directory))

    def stop(self) -> None:
        self._auth.stop()


def server_socket(context: zmq.Context, address: str, keys: Keys | None) -> tuple[zmq.Socket, str]:
    """A ROUTER socket bound to ``address`` (``tcp://HOST:0`` picks a free port); returns it and
    the address it is bound to."""
    sock = context.socket(zmq.ROUTER)
    _common(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a peer that has gone is dropped
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys.server_pair()
        sock.curve_server = True
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
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
