"""Start ``radixrt serve`` as a child process from Python and wait until it serves: for scripts,
benchmarks and tests that need a real server. ``stop()`` (or leaving the ``with`` block) sends
SIGTERM and makes sure that no worker outlives it."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists


class ServerProcess:
    """``radixrt serve --port 0 ARGS``; its log (stderr) goes to ``log``, ``address`` is where it
    serves once ready. Raises ``RuntimeError`` with the log's tail if it does not get ready."""

    def __init__(self, args: list[str], log: str | Path, ready_timeout: float = 300.0, env: dict | None = None) -> None:
        self.log = Path(log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radixrt", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.http_url: str | None = None  # with --http-port
        self.address = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                line = self.proc.stdout.readline()
                if match := re.search(r"HTTP at (\S+)", line):
                    self.http_url = match.group(1)
                if match := re.search(r"ready at (\S+)", line):
                    return match.group(1)
        self.stop()
        raise RuntimeError(f"radixrt serve did not get ready:\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> dict[str, int]:
        """The latest pid of each local worker, from the router's log."""
        return {name: int(pid) for name, pid in re.findall(r"worker (\w+) joined \(pid (\d+)", self.log.read_text())}

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; raises ``RuntimeError`` if it had to kill
        anything (the server or a worker that outlived it)."""
        pids = self.worker_pids()
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problems.append(f"radixrt serve did not stop on SIGTERM within {timeout:.0f} s")
        deadline = time.monotonic() + 10
        left = [pid for pid in pids.values() if pid_alive(pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if pid_alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            problems.append(f"worker processes {left} outlived radixrt serve")
        if problems:
            raise RuntimeError("; ".join(problems))

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
