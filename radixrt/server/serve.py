"""``radixrt serve``: the router in this process, and local worker processes that it restarts
when they die. SIGINT or SIGTERM stops everything it started; workers also end by themselves
when this process is gone (killed, say), so none is left behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from radixrt.engine_args import worker_disk
from radixrt.server.router import Router

log = logging.getLogger("radixrt.serve")

BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 60.0


@dataclass
class LocalWorker:
    name: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None


class LocalWorkers:
    """Worker processes on this machine: ``reap`` reports the ones that died and schedules their
    restart, with a backoff that doubles while a worker keeps dying young."""

    def __init__(
        self, count: int, worker_args: list[str], env: dict[str, str] | None = None, disk_cache: str | None = None
    ) -> None:
        self.args, self.env, self.disk_cache = worker_args, env, disk_cache  # a subdirectory of disk_cache each
        self.workers = [LocalWorker(f"w{i}") for i in range(count)]

    def start_all(self) -> None:
        for w in self.workers:
            self._start(w)

    def reap(self, now: float) -> list[tuple[str, str]]:
        """(name, why) of workers that died since the last call; restarts the ones due."""
        dead = []
        for w in self.workers:
            if w.process is not None and (code := w.process.poll()) is not None:
                w.process = None
                w.backoff = BACKOFF_FIRST if now - w.started > STABLE_AFTER else min(2 * w.backoff, BACKOFF_MAX)
                w.restart_at = now + w.backoff
                dead.append((w.name, f"exited with code {code}"))
                log.warning("worker %s exited with code %d; restarting it in %.1f s", w.name, code, w.backoff)
            elif w.process is None and w.restart_at is not None and now >= w.restart_at:
                self._start(w)
        return dead

    def stop(self, timeout: float = 10.0) -> None:
        running = [w.process for w in self.workers if w.process is not None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _start(self, w: LocalWorker) -> None:
        index = int(w.name[1:])
        env = dict(os.environ if self.env is None else self.env)
        if "RADIXRT_DEVICES" in env:  # one GPU per worker
            devices = env["RADIXRT_DEVICES"].split(",")
            env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
        cmd = [
            sys.executable,
            "-m",
            "radixrt",
            "worker",
            "--name",
            w.name,
            "--parent-pid",
            str(os.getpid()),
            *self.args,
            *worker_disk(self.disk_cache, w.name),
        ]
        w.process = subprocess.Popen(
            cmd, env=env, start_new_session=True
        )  # Ctrl-C reaches serve alone, which stops them
        w.started, w.restart_at = time.monotonic(), None


def run_until_stopped(router: Router, workers: LocalWorkers, ready_timeout: float = 600.0) -> None:
    """Run ``router`` with ``workers`` until SIGINT or SIGTERM."""
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        workers.start_all()
        expected, start, announced = len(workers.workers), time.monotonic(), False
        while not stopping:
            router.poll(0.05)
            now = time.monotonic()
            for name, why in workers.reap(now):
                router.worker_lost(name, why)
            if not announced and len(router.workers) >= expected:
                announced = True
                print(f"radixrt: ready at {router.address} ({len(router.workers)} workers, {router.model})", flush=True)
            elif not announced and now - start > ready_timeout:
                raise RuntimeError(f"only {len(router.workers)} of {expected} workers started in {ready_timeout:.0f} s")
    finally:
        print("radixrt: stopping", file=sys.stderr, flush=True)
        workers.stop()
        router.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
