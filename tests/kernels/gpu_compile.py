"""Compile every kernel for an H100 (sm90) without a GPU, with the ptxas that ships in the triton
wheel: the interpreter accepts code the GPU compiler rejects (a tl.dot under 16, a bad cast), and
this is where such code fails on a CPU-only machine. Prints one line per variant: OK or FAIL."""

import os

os.environ.pop("TRITON_INTERPRET", None)  # noqa: E402  (must precede the kernels' import)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from radixrt.kernels import decode, extend, kv_write  # noqa: E402
from radixrt.kernels.layout import KV_FLOAT, KV_FP8, KV_INT4, KV_INT8  # noqa: E402
from radixrt.kernels.tiles import head_blocks, key_block  # noqa: E402

INT32_POINTERS = {"KV_INDPTR", "KV_INDICES", "SEQ_LENS", "QO_INDPTR", "PREFIX_LENS"}
FP32_POINTERS = {"PART_O", "PART_LSE", "SINKS"}
SCALE_POINTERS = {"K_SCALE", "V_SCALE"}
FORMATS = {"i8": KV_INT8, "fp8e4nv": KV_FP8, "u8": KV_INT4}
"""Pool dtypes that are not float, by their format (a uint8 pool is packed int4)."""
PAIRS = (
    ("fp32", "fp32"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
    ("bf16", "fp32"),
    ("fp32", "bf16"),
    ("fp16", "bf16"),
    ("bf16", "fp8e4nv"),
    ("fp16", "fp8e4nv"),
    ("bf16", "i8"),
    ("fp32", "i8"),
    ("bf16", "u8"),
    ("fp32", "u8"),
)
"""(compute dtype, pool dtype): every format, and float pools read by another float dtype."""
HEAD_DIMS = ((64, 64), (96, 96), (128, 128), (192, 128))
"""(K, V) head dims: powers of two, one the kernels pad (to 128, masking the channels past 96), and
K and V apart (DeepSeek MLA's non-absorbed 192 / 128)."""
LARGE = (("bf16", "bf16"), ("fp32", "fp32"), ("bf16", "u8"))
LARGE_DIMS = (576, 512)
"""MLA's absorbed K 576 / V 512 (padded to 1024 / 512, with small key blocks), for a few pairs."""

SM90_SHARED = 227 * 1024
"""The most shared memory one block of an H100 may use: a kernel asking more compiles but does not launch."""


def signature(fn, q_dtype: str, kv_dtype: str) -> dict[str, str]:
    """Pointer types by parameter name: the pool (K, V) in ``kv_dtype``, its scales in what that
    format keeps (float16 for int4, else float32), activations in ``q_dtype``."""
    sig = {}
    for p in fn.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name in ("K", "V"):
            sig[name] = f"*{kv_dtype}"
        elif name in INT32_POINTERS:
            sig[name] = "*i32"
        elif name in FP32_POINTERS:
            sig[name] = "*fp32"
        elif name in SCALE_POINTERS:
            sig[name] = "*fp16" if kv_dtype == "u8" else "*fp32"
        elif name == "SLOTS":
            sig[name] = "*i64"
        elif name.isupper():
            sig[name] = f"*{q_dtype}"
        else:
            sig[name] = "fp32" if name in ("sm_scale", "softcap") else "i32"
    return sig


def main() -> None:
    target = GPUTarget("cuda", 90, 32)
    cases = [(pair, dims) for pair in PAIRS for dims in HEAD_DIMS] + [(pair, LARGE_DIMS) for pair in LARGE]
    for (q_dtype, kv_dtype), (k_dim, v_dim) in cases:
        block = key_block(4 if q_dtype == "fp32" else 2, k_dim, v_dim)
        blocks = head_blocks(k_dim, v_dim)
        common = dict(KV_HEADS=8, K_DIM=k_dim, V_DIM=v_dim, **blocks, KV_FORMAT=FORMATS.get(kv_dtype, KV_FLOAT))
        attention = dict(common, V_ROW=v_dim, GROUP=4, PAGE_SIZE=16, IEEE=q_dtype == "fp32", SOFTCAP=False)
        merge = dict(Q_HEADS=32, V_DIM=v_dim, BLOCK_DV=blocks["BLOCK_DV"], BLOCK_S=8)
        variants = [
            (decode._decode_partial, dict(attention, Q_HEADS=32, BLOCK_N=block, BLOCK_H=16)),
            (extend._extend, dict(attention, BLOCK_M=block, BLOCK_N=block, HAS_SINKS=False)),
            (kv_write._write_kv, dict(common, BLOCK_H=8, WRITE_V=True)),
            (decode._decode_merge, dict(merge, HAS_SINKS=False)),
        ]
        if (k_dim, v_dim) == (64, 64):  # gpt-oss's attention sinks; Gemma 2's soft-capped scores
            variants += [
                (extend._extend, dict(attention, BLOCK_M=block, BLOCK_N=block, HAS_SINKS=True)),
                (decode._decode_merge, dict(merge, HAS_SINKS=True)),
                (decode._decode_partial, dict(attention, Q_HEADS=32, BLOCK_N=block, BLOCK_H=16, SOFTCAP=True)),
                (extend._extend, dict(attention, BLOCK_M=block, BLOCK_N=block, HAS_SINKS=False, SOFTCAP=True)),
            ]
        if (k_dim, v_dim) == LARGE_DIMS:  # MLA's latent pool: V read out of K's rows, K written alone
            latent = dict(attention, KV_HEADS=1, GROUP=128, V_ROW=k_dim)  # DeepSeek-V3's 128 heads on one GPU
            variants += [
                (decode._decode_partial, dict(latent, Q_HEADS=128, BLOCK_N=block, BLOCK_H=16)),
                (extend._extend, dict(latent, BLOCK_M=block, BLOCK_N=block, HAS_SINKS=False)),
                (kv_write._write_kv, dict(common, KV_HEADS=1, BLOCK_H=1, WRITE_V=False)),
            ]
        for fn, constexprs in variants:
            name = f"{fn.__name__} q={q_dtype} kv={kv_dtype} k_dim={k_dim} v_dim={v_dim}"
            try:
                src = ASTSource(fn=fn, signature=signature(fn, q_dtype, kv_dtype), constexprs=constexprs)
                kernel = triton.compile(src, target=target, options={"num_warps": 4, "num_stages": 2})
                shared = kernel.metadata.shared
                print("OK" if shared <= SM90_SHARED else "FAIL", name, f"shared={shared}")
            except Exception as e:  # the compiler's own error, reported per variant
                print("FAIL", name, f"{type(e).__name__}: {e}"[:2000])


if __name__ == "__main__":
    main()
