"""``radixrt replay``: simulation, live replay (in-process and through a server whose only worker
is killed mid-way), its report and plots, and malformed traces."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from radixrt.cli import main
from radixrt.client import Client
from radixrt.replay.sweep import parse_capacities
from radixrt.replay.trace import TraceRequest, write_trace
from testkit.servers import start_server, wait_for
from testkit.traces import agent_trace


def test_capacities_parse():
    assert parse_capacities("1k, 4k,16,2.5k,1m,unlimited") == [1000, 4000, 16, 2500, 1_000_000, None]
    with pytest.raises(ValueError, match="capacity 'lots'"):
        parse_capacities("lots")


def test_simulate_prints_lru_and_the_optimum_and_writes_the_report(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, agent_trace(sessions=4, turns=3))
    assert (
        main(
            [
                "replay",
                str(trace),
                "--simulate",
                "--capacity",
                "8,32,unlimited",
                "--page-size",
                "4",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "LRU / optimum" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = report["simulation"]
    assert [r["capacity_pages"] for r in rows] == [8, 32, None]
    assert all(r["optimal_hit_rate"] >= r["lru_hit_rate"] for r in rows) and rows[-1]["lru_of_optimal"] == 1.0
    assert (tmp_path / "out" / report["plots"][0]).stat().st_size > 1000


def test_simulate_with_lower_tiers_reports_each_tiers_hits(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, agent_trace(sessions=6, turns=3))
    args = ["replay", str(trace), "--simulate", "--capacity", "12,16", "--page-size", "4", "--out", str(tmp_path)]
    assert main([*args, "--host-capacity", "2", "--disk-capacity", "256"]) == 0
    assert "from host" in capsys.readouterr().out
    rows = json.loads((tmp_path / "report.json").read_text())["simulation"]
    assert all(r["tiered_hit_rate"] > r["lru_hit_rate"] for r in rows)
    assert rows[0]["host_hit_rate"] > 0 and rows[0]["disk_hit_rate"] > 0
    assert main([*args, "--host-capacity", "-1"]) == 2


def test_a_live_replay_reports_metrics_and_plots(tmp_path, capsys, tiny_with_tokenizer):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, agent_trace(sessions=3, turns=2))
    assert (
        main(
            [
                "replay",
                str(trace),
                "--engine",
                "--model",
                tiny_with_tokenizer,
                "--timing",
                "max",
                "--page-size",
                "4",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "6 succeeded, 0 failed" in out and "hit rate" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["succeeded"] == 6 and len(report["per_request"]) == 6
    assert len(report["plots"]) == 3 and all((tmp_path / "out" / name).exists() for name in report["plots"])
    assert report["simulation"][-1]["capacity_pages"] is None  # the live replay's prompts, simulated too


def test_a_malformed_line_stops_the_replay_or_is_skipped_as_the_flag_says(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    good = [json.dumps({"session": "s", "id": f"r{i}", "input_ids": list(range(10 + i, 30 + i))}) for i in range(3)]
    trace.write_text(
        "\n".join([good[0], '{"session": "s", "id": "bad", "arrival": -1, "input_ids": [1]}', *good[1:]]) + "\n"
    )
    assert main(["replay", str(trace), "--simulate", "--capacity", "4", "--page-size", "4"]) == 2
    assert "t.jsonl:2: arrival: Expected `float` >= 0" in capsys.readouterr().err
    assert (
        main(
            [
                "replay",
                str(trace),
                "--simulate",
                "--capacity",
                "4",
                "--page-size",
                "4",
                "--on-error",
                "skip",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "skipped" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["requests"] == 3 and len(report["malformed_lines"]) == 1


def test_a_replay_through_a_server_whose_worker_dies_reports_the_errors_and_finishes(
    tmp_path, capsys, tiny_with_tokenizer
):
    served = start_server(
        ["--model", tiny_with_tokenizer, "--workers", "1", "--page-size", "4"], tmp_path / "serve.log"
    )
    try:
        trace = tmp_path / "t.jsonl"
        requests = [
            TraceRequest(f"s{i}", f"s{i}", input_ids=list(range(100 + i, 140 + i)), output_tokens=400) for i in range(8)
        ]
        write_trace(trace, requests)

        def kill_the_worker() -> None:
            with Client(served.address) as control:
                wait_for(lambda: control.stats()["router"]["inflight"] >= 2, 60, what="requests in flight")
                (pid,) = served.worker_pids().values()
                os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_the_worker)
        killer.start()
        code = main(
            [
                "replay",
                str(trace),
                "--server",
                served.address,
                "--timing",
                "max",
                "--concurrency",
                "4",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        killer.join(60)
        assert code == 0
        summary = json.loads((tmp_path / "out" / "report.json").read_text())["summary"]
        assert summary["sent"] == 8 and summary["failed"] >= 1
        assert "failed" in capsys.readouterr().out
    finally:
        served.stop()
