import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile and run the kernels for real")
def test_kernels_compile_for_sm90():
    script = Path(__file__).with_name("gpu_compile.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()  # 12 (compute, pool) dtype pairs x 3 head dims x 4 kernels
    assert len(lines) == 144 and all(line.startswith("OK") for line in lines), "\n".join(
        line for line in lines if not line.startswith("OK")
    )
