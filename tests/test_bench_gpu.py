"""bench/bench_gpu.py and bench/device_check.sh on a machine without a GPU: the CPU dry run (tiny
models, a handful of tokens) runs, finds greedy parity with transformers in float32, and says that
no GPU figure was measured; the device check skips its GPU steps and still writes its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU dry run; a GPU runs the real thing")


def env() -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # python3 = this python
    return {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "DEVICE_CHECK_WHEELS": "/nonexistent"}


def test_device_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "device_check.sh")], check=True)


def test_device_check_on_a_cpu_runs_the_dry_run(tmp_path):
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "device_check.sh"), str(tmp_path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "bench_gpu_dry_run.log").read_text()
    assert "no CUDA device: skipping kernel_tests" in run.stdout
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["device"] == "cpu" and result["cuda"] is False and result["torch"] == torch.__version__
    step = result["steps"]["bench_gpu_dry_run"]
    assert step["exit"] == 0 and step["seconds"] >= 0
    dry = step["json"]
    assert dry["bench"] == "gpu" and dry["device"] == "cpu" and dry["gpu_measured"] is False
    assert dry["errors"] == {} and dry["parity_all_exact"] is True
    assert {r["shape"] for r in dry["parity"]} == {"tiny-smollm2", "tiny-llama3"}
    assert {r["system"] for r in dry["decode"]} == {"radixrt", "transformers_static"}
    assert dry["overlap"] and "llama3_8b_b1" not in dry
    log = (tmp_path / "bench_gpu_dry_run.log").read_text()
    assert "no CUDA device: the GPU figures are not measured" in log
    assert json.loads(log.strip().splitlines()[-1]) == dry  # the last line is the JSON
