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
    # 4 kernels x (12 dtype pairs x 4 head dims + 3 pairs at 576/512), + 3 latent ones x 3 pairs,
    # + 4 with sinks or a soft-cap x 12 pairs
    lines = out.stdout.splitlines()
    assert len(lines) == 261 and all(line.startswith("OK") for line in lines), "\n".join(
        line for line in lines if not line.startswith("OK")
    )
