"""The workers a router knows: who may join under which name, and who is still alive.

A worker registers from the ZeroMQ identity of its name and sends its heartbeats from
``NAME/heartbeat``; with keys, both must come with the key it registered with, so a peer cannot
speak for a worker it is not. A name is taken back only by the key that holds it (a restarted
worker), and a worker whose vocabulary differs from the others' is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixrt.server.routing import WorkerView
from radixrt.wire import protocol as p


@dataclass(eq=False)
class WorkerState:
    info: p.Register
    identity: bytes
    view: WorkerView
    last_seen: float
    user: str | None = None  # the public key it registered with (None without keys)
    jobs: set[str] = field(default_factory=set)


def registration_problem(
    msg: p.Register, identity: bytes, user: str | None, workers: dict[str, WorkerState]
) -> str | None:
    """Why the worker that sent ``msg`` may not join, or None."""
    holder = workers.get(msg.worker)
    if msg.version != p.PROTOCOL_VERSION:
        return f"it speaks protocol version {msg.version}, not {p.PROTOCOL_VERSION}"
    if identity != msg.worker.encode():
        return f"it registers as {msg.worker!r} from the identity {identity!r}"
    if holder is not None and holder.user != user:
        return "that name belongs to a worker that holds another key"
    others = [w.info for name, w in workers.items() if name != msg.worker]
    if others and msg.vocab_size != others[0].vocab_size:
        return f"its model's vocabulary ({msg.vocab_size}) differs from the other workers' ({others[0].vocab_size})"
    return None


def beat(workers: dict[str, WorkerState], identity: bytes, user: str | None, msg: p.Heartbeat, now: float) -> None:
    """Note a heartbeat, if it comes from the worker it names."""
    worker = workers.get(msg.worker)
    if worker is not None and identity == f"{msg.worker}/heartbeat".encode() and user == worker.user:
        worker.last_seen = now


def by_identity(workers: dict[str, WorkerState], identity: bytes) -> WorkerState | None:
    worker = workers.get(identity.decode(errors="replace"))
    return worker if worker is not None and worker.identity == identity else None


def silent(workers: dict[str, WorkerState], now: float, timeout: float) -> list[tuple[str, float]]:
    """The workers not heard from for more than ``timeout`` seconds, with how long."""
    return [(name, now - w.last_seen) for name, w in workers.items() if now - w.last_seen > timeout]
