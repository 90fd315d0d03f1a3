"""``Program``: one run of a program, shared by its states (the main one and every fork's branches)."""

from __future__ import annotations

import threading
from typing import Any

from radixrt.lang.backend import Backend, Handle


class Program:
    """What one run's states share: the backend, and the requests and pins to let go of if the
    program dies."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.handles: set[Handle] = set()
        self.pins: dict[str, int] = {}  # pin id -> branches still using it
        self.cancelled = False

    def submit(self, *args: Any, **kwargs: Any) -> Handle:
        with self.lock:
            if self.cancelled:
                raise RuntimeError("the program was cancelled")
            handle = self.backend.submit(*args, **kwargs)
            self.handles.add(handle)
        return handle

    def finished(self, handle: Handle) -> None:
        with self.lock:
            self.handles.discard(handle)

    def pin(self, ids: list[int], branches: int) -> str:
        pin_id = self.backend.pin(ids)
        with self.lock:
            self.pins[pin_id] = branches
            cancelled = self.cancelled
        if cancelled:
            self.unpin(pin_id)
        return pin_id

    def release(self, pin_id: str, branches: int = 1) -> None:
        """``branches`` users of the pin are done with it; the last one unpins it."""
        with self.lock:
            left = self.pins.get(pin_id)
            if left is None:
                return
            self.pins[pin_id] = left - branches
            if self.pins[pin_id] > 0:
                return
        self.unpin(pin_id)

    def unpin(self, pin_id: str) -> None:
        with self.lock:
            self.pins.pop(pin_id, None)
        self.backend.unpin(pin_id)

    def cancel(self) -> None:
        """Abort every running request and release every pin (the program raised)."""
        with self.lock:
            self.cancelled = True
            handles, pins = list(self.handles), list(self.pins)
            self.handles.clear()
        for handle in handles:
            handle.close()
        for pin_id in pins:
            self.unpin(pin_id)
