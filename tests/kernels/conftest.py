"""Kernel tests: the Triton interpreter's bfloat16 and fp8 fixes, and a per-test random generator."""

import importlib.util
import os
import zlib

import numpy as np
import pytest
import torch

# triton is installed on Linux only; elsewhere the tests that import its kernels are not collected
collect_ignore = (
    []
    if importlib.util.find_spec("triton")
    else [
        "test_attention.py",
        "test_kv_formats.py",
        "test_kv_write.py",
        "test_gpu_compile.py",
        "test_engine_triton.py",
        "test_head_dims.py",
        "test_kv_head_dims.py",
        "test_latent_kv.py",
        "test_attention_options.py",
    ]
)

if collect_ignore:
    pass
elif os.environ.get("TRITON_INTERPRET") == "1":
    import triton.language as tl
    from triton.runtime import interpreter

    _create_dot = interpreter.InterpreterBuilder.create_dot

    def _create_dot_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        """The interpreter keeps bfloat16 as raw uint16 bits and multiplies those as integers;
        widen them to float32 (what a GPU's bf16 MMA computes exactly) first."""

        def widen(h):
            if h.dtype == tl.bfloat16:
                return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            return h

        return _create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = _create_dot_bf16

    _convert_float = interpreter._convert_float
    _ROUNDED = {tl.float8e4nv: (torch.float8_e4m3fn, torch.uint8), tl.bfloat16: (torch.bfloat16, torch.int16)}

    def _convert_float_rounded(data, src_type, dst_type, rounding_mode):
        """The interpreter truncates float32 -> fp8 e4m3 and loses the carry when rounding up to
        the next power of two (31.6 becomes 16), and truncates float32 -> bfloat16; convert as the
        GPU does, to nearest even."""
        if src_type == tl.float32 and dst_type in _ROUNDED:
            dtype, bits = _ROUNDED[dst_type]
            return torch.from_numpy(np.ascontiguousarray(data)).to(dtype).view(bits).numpy()
        return _convert_float(data, src_type, dst_type, rounding_mode)

    interpreter._convert_float = _convert_float_rounded


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test's id: fresh inputs per case, the same on every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
