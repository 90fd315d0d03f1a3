"""Storing new tokens' K and V into the paged pool at their slots (``page * page_size + offset``),
quantised as the pool's format asks (see :mod:`radixrt.kernels.layout`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixrt.kernels.layout import (
    FP8_MAX,
    INT4_GROUP,
    INT4_SCALE_FLOOR,
    INT8_SCALE_FLOOR,
    KV_FLOAT,
    KV_FP8,
    KV_INT4,
    KV_INT8,
    check_write,
)
from radixrt.kernels.tiles import head_blocks

FLOAT = tl.constexpr(KV_FLOAT)
INT8 = tl.constexpr(KV_INT8)
FP8 = tl.constexpr(KV_FP8)
INT4 = tl.constexpr(KV_INT4)
GROUP = tl.constexpr(INT4_GROUP)
SATURATE = tl.constexpr(FP8_MAX)
ROUNDER = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + it) - it rounds x half to even, |x| < 2**22
SCALE_FLOOR = tl.constexpr(INT8_SCALE_FLOOR)
INT4_FLOOR = tl.constexpr(INT4_SCALE_FLOOR)


@triton.jit
def quantize_symmetric(x, SCALES, row, ok, LIMIT: tl.constexpr, ROUND: tl.constexpr):
    """Rows ``x [BLOCK_H, BLOCK_D]`` -> ``x / scale`` clamped to +-``LIMIT`` (rounded to integers
    with ``ROUND``, as ``torch.round`` does: the interpreter has no ``rint``), ``scale = max |row|
    / LIMIT``, which is stored at ``SCALES[row]``. Padding channels must hold 0: ``|0|`` never
    raises the max, so only the real channels set the scale."""
    scale = tl.maximum(tl.max(tl.abs(x), 1) / LIMIT, SCALE_FLOOR)
    tl.store(SCALES + row, scale, mask=ok)
    x = tl.clamp(x / scale[:, None], -LIMIT, LIMIT)
    if ROUND:
        x = (x + ROUNDER) - ROUNDER
    return x


@triton.jit
def quantize_int4(x, SCALES, row, ok, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``x [BLOCK_H, BLOCK_D]`` -> ``[BLOCK_H, BLOCK_D // 2]`` bytes, two 4-bit values
    each (channel 2j low, 2j + 1 high); each group's float16 scale and zero go to ``SCALES[row]``.
    ``HEAD_DIM`` is a multiple of ``GROUP`` and ``BLOCK_D`` a power of two >= it, so the padding
    channels form whole groups of their own, whose scales are not stored (nor their bytes)."""
    groups = tl.reshape(x, [BLOCK_H, BLOCK_D // GROUP, GROUP])
    low, high = tl.min(groups, 2), tl.max(groups, 2)
    scale = tl.maximum((high - low) / 15.0, INT4_FLOOR).to(tl.float16)
    zero = low.to(tl.float16)
    g = tl.arange(0, BLOCK_D // GROUP)
    mask = ok[:, None] & (g < HEAD_DIM // GROUP)[None, :]
    at = SCALES + row[:, None] * (2 * HEAD_DIM // GROUP) + g[None, :]
    tl.store(at, scale, mask=mask)
    tl.store(at + HEAD_DIM // GROUP, zero, mask=mask)
    q = (groups - zero.to(tl.float32)[:, :, None]) / scale.to(tl.float32)[:, :, None]
    q = (tl.clamp(q, 0.0, 15.0) + ROUNDER) - ROUNDER
    pairs = tl.reshape(q.to(tl.uint8), [BLOCK_H, BLOCK_D // 2, 2])
    even, odd = tl.split(pairs)
    return even | (odd << 4)


@triton.jit
def store_rows(
    POOL,
    SCALES,
    x,
    row,
    ok,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KV_FORMAT: tl.constexpr,
):
    """Store rows ``x [BLOCK_H, BLOCK_D]`` (channels past ``HEAD_DIM`` 0, not stored) at pool rows
    ``row`` (``slot * kv_heads + head``)."""
    if KV_FORMAT == INT4:
        j = tl.arange(0, BLOCK_D // 2)
        packed = quantize_int4(x.to(tl.float32), SCALES, row, ok, BLOCK_H, HEAD_DIM, BLOCK_D)
        mask = ok[:, None] & (j < HEAD_DIM // 2)[None, :]
        tl.store(POOL + row[:, None] * (HEAD_DIM // 2) + j[None, :], packed, mask=mask)
    else:
        if KV_FORMAT == INT8:
            x = quantize_symmetric(x.to(tl.float32), SCALES, row, ok, 127.0, True)
        elif KV_FORMAT == FP8:
            x = quantize_symmetric(x.to(tl.float32), SCALES, row, ok, SATURATE, False)
        d = tl.arange(0, BLOCK_D)
        mask = ok[:, None] & (d < HEAD_DIM)[None, :]
        tl.store(POOL + row[:, None] * HEAD_DIM + d[None, :], x.to(POOL.dtype.element_ty), mask=mask)


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
    K_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_H: tl.constexpr,
    KV_FORMAT: tl.constexpr,
    WRITE_V: tl.constexpr,
):
    i = tl.program_id(0)
    slot = tl.load(SLOTS + i).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    h_ok = h < KV_HEADS
    row = slot * KV_HEADS + h
    dk = tl.arange(0, BLOCK_DK)
    dv = tl.arange(0, BLOCK_DV)
    k_mask = h_ok[:, None] & (dk < K_DIM)[None, :]  # padding channels read 0
    v_mask = h_ok[:, None] & (dv < V_DIM)[None, :]
    k = tl.load(K_NEW + i * stride_kt + h[:, None] * stride_kh + dk[None, :], mask=k_mask, other=0.0)
    store_rows(K, K_SCALE, k, row, h_ok, BLOCK_H, K_DIM, BLOCK_DK, KV_FORMAT)
    if WRITE_V:
        v = tl.load(V_NEW + i * stride_vt + h[:, None] * stride_vh + dv[None, :], mask=v_mask, other=0.0)
        store_rows(V, V_SCALE, v, row, h_ok, BLOCK_H, V_DIM, BLOCK_DV, KV_FORMAT)


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor | None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Token i of ``k_new [tokens, kv_heads, k_dim]``/``v_new [..., v_dim]`` goes to slot
    ``slots[i]``, cast to a float pool's dtype or quantised, its scales written to
    ``k_scale``/``v_scale`` at the same slot (``v_new`` None: V lives in K's rows, MLA). No
    device-to-host sync: CUDA-graph capturable."""
    fmt = check_write(k_pool, v_pool, slots, k_new, v_new, k_scale, v_scale)
    if slots.numel() == 0:
        return
    write_v = v_new is not None
    v_new, v_pool, v_scale = (v_new, v_pool, v_scale) if write_v else (k_new, k_pool, k_scale)
    kv_heads, k_dim = k_new.shape[1:]
    v_dim = v_new.shape[2]
    if fmt == KV_FLOAT:
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
        K_DIM=k_dim,
        V_DIM=v_dim,
        **head_blocks(k_dim, v_dim),
        BLOCK_H=triton.next_power_of_2(kv_heads),
        KV_FORMAT=fmt,
        WRITE_V=write_v,
        num_warps=1,
    )
