"""Storing new tokens' K and V into the paged pool at their slots (``page * page_size + offset``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixrt.kernels.layout import INT8_SCALE_FLOOR, check_write

FP8_MAX = tl.constexpr(448.0)  # largest finite float8 e4m3fn: quantised values saturate here
ROUNDER = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + it) - it rounds x half to even, |x| < 2**22
SCALE_FLOOR = tl.constexpr(INT8_SCALE_FLOOR)


@triton.jit
def quantize_int8(x, SCALES, slot, h, h_ok, KV_HEADS: tl.constexpr):
    """Rows ``x [BLOCK_H, HEAD_DIM]`` (one per KV head) -> ``round(x / scale)`` in [-127, 127],
    ``scale = max |row| / 127``, which is stored at ``SCALES[slot, h]``. Rounds as ``torch.round``
    does (the interpreter has no ``rint``)."""
    x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1) / 127.0, SCALE_FLOOR)
    tl.store(SCALES + slot * KV_HEADS + h, scale, mask=h_ok)
    x = tl.clamp(x / scale[:, None], -127.0, 127.0)
    return ((x + ROUNDER) - ROUNDER).to(tl.int8)


@triton.jit
def _write_kv(
    K_NEW,
    V_NEW,
    K,
    V,
    SLOTS,
    K_SCALE,
    V_SCALE,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    QUANTIZED: tl.constexpr,
    PER_TOKEN: tl.constexpr,
):
    i = tl.program_id(0)
    slot = tl.load(SLOTS + i).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    h_ok = h < KV_HEADS
    d = tl.arange(0, HEAD_DIM)
    dst = (slot * KV_HEADS + h[:, None]) * HEAD_DIM + d[None, :]
    k = tl.load(K_NEW + i * stride_kt + h[:, None] * stride_kh + d[None, :], mask=h_ok[:, None], other=0.0)
    v = tl.load(V_NEW + i * stride_vt + h[:, None] * stride_vh + d[None, :], mask=h_ok[:, None], other=0.0)
    if PER_TOKEN:
        k = quantize_int8(k, K_SCALE, slot, h, h_ok, KV_HEADS)
        v = quantize_int8(v, V_SCALE, slot, h, h_ok, KV_HEADS)
    elif QUANTIZED:
        k_scale = tl.load(K_SCALE + h, mask=h_ok, other=1.0)
        v_scale = tl.load(V_SCALE + h, mask=h_ok, other=1.0)
        k = tl.clamp(k.to(tl.float32) / k_scale[:, None], -FP8_MAX, FP8_MAX)
        v = tl.clamp(v.to(tl.float32) / v_scale[:, None], -FP8_MAX, FP8_MAX)
    tl.store(K + dst, k.to(K.dtype.element_ty), mask=h_ok[:, None])
    tl.store(V + dst, v.to(V.dtype.element_ty), mask=h_ok[:, None])


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Token i of ``k_new``/``v_new [tokens, kv_heads, head_dim]`` goes to slot ``slots[i]``; an
    fp8 pool stores ``value / scale`` per KV head, saturated to the fp8 range; an int8 pool stores
    ``round(value / scale)`` and writes each token's scale per head into ``k_scale``/``v_scale
    [num_pages, page_size, kv_heads]`` at the same slot."""
    quantized = check_write(k_pool, v_pool, slots, k_new, v_new, k_scale, v_scale)
    if slots.numel() == 0:
        return
    kv_heads, head_dim = k_pool.shape[2:]
    if not quantized:
        k_scale = v_scale = slots.new_ones(1, dtype=torch.float32)  # unused pointer
    _write_kv[(slots.numel(),)](
        k_new,
        v_new,
        k_pool,
        v_pool,
        slots,
        k_scale,
        v_scale,
        k_new.stride(0),
        k_new.stride(1),
        v_new.stride(0),
        v_new.stride(1),
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(kv_heads),
        QUANTIZED=quantized is not None,
        PER_TOKEN=quantized == "int8",
        num_warps=1,
    )
