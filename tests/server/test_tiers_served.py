"""The disk tier under ``radixrt serve``: each local worker writes to a subdirectory of its own, and
a worker killed mid-flight (SIGKILL) is restarted by ``serve`` with its disk cache: the prompts it
had cached hit again, loaded from disk."""

from __future__ import annotations

import os
import signal

import numpy as np

from radixrt import SamplingParams
from radixrt.client import Client
from testkit.servers import wait_for

ONE = SamplingParams(max_new_tokens=1, temperature=0)


def test_a_worker_killed_and_restarted_keeps_its_disk_cache(serve, tiny_with_tokenizer, tmp_path):
    disk = tmp_path / "kv"
    served = serve(
        "--model", tiny_with_tokenizer, "--workers", "1", "--page-size", "4",
        "--disk-cache", str(disk), "--disk-cache-gb", "0.01",
    )  # fmt: skip
    prompts = [np.random.default_rng(seed).integers(100, 40000, 64).tolist() for seed in range(4)]
    with Client(served.address) as client:
        client.generate(prompts, ONE)
        stats = lambda: client.stats()["workers"]["w0"]  # noqa: E731
        wait_for(lambda: stats()["disk_queued"] == 0 and stats()["disk_writes"] >= 4 * 15, 10, what="the disk writes")
        assert [p.name for p in disk.iterdir()] == ["w0"]
        (pid,) = served.worker_pids().values()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: served.worker_pids()["w0"] != pid and client.health()["ok"], 60, what="the restarted worker")
        wait_for(lambda: stats()["pages_disk"] >= 4 * 15, 30, what="the restarted worker's stats")
        again = client.generate(prompts, ONE)
        assert [o.cached_tokens for o in again] == [60] * 4  # all but the last token's page
        assert stats()["disk_hit_tokens"] == 4 * 60 and stats()["disk_load_failures"] == 0
