"""The KV formats in PyTorch (the CPU path): quantising new K/V for the pool and dequantising
rows read from it, as the Triton kernels do in registers (see :mod:`radixrt.kernels.layout`)."""

from __future__ import annotations

import torch

from radixrt.kernels.layout import (
    FP8,
    FP8_MAX,
    INT4_GROUP,
    INT4_SCALE_FLOOR,
    INT8_SCALE_FLOOR,
    KV_FLOAT,
    KV_FP8,
    KV_INT4,
    KV_INT8,
    kv_format,
)


def quantize_symmetric(x: torch.Tensor, limit: float, rounded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., head_dim]`` -> ``x / scale`` clamped to +-``limit`` (rounded to integers if
    ``rounded``) and the float32 ``scale = max |x| / limit [...]``."""
    x = x.float()
    scale = (x.abs().amax(-1) / limit).clamp_min(INT8_SCALE_FLOOR)
    x = (x / scale[..., None]).clamp(-limit, limit)
    return (torch.round(x) if rounded else x), scale


def quantize_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., head_dim]`` -> packed uint8 ``[..., head_dim // 2]`` (channel 2j in the low
    nibble of byte j, 2j + 1 in the high one) and float16 ``[..., 2 * groups]``: the groups'
    scales, then their zeros."""
    groups = x.float().unflatten(-1, (-1, INT4_GROUP))
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15.0).clamp_min(INT4_SCALE_FLOOR).half()
    zero = low.half()
    q = torch.round(((groups - zero.float()[..., None]) / scale.float()[..., None]).clamp(0.0, 15.0))
    pairs = q.to(torch.uint8).flatten(-2).unflatten(-1, (-1, 2))
    return pairs[..., 0] | (pairs[..., 1] << 4), torch.cat([scale, zero], -1)


def quantize(x: torch.Tensor, pool_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New K or V ``[..., head_dim]`` as a pool of ``pool_dtype`` stores them, with their scales
    (None for a float pool)."""
    fmt = kv_format(pool_dtype)
    if fmt == KV_FLOAT:
        return x.to(pool_dtype), None
    if fmt == KV_INT4:
        return quantize_int4(x)
    stored, scale = quantize_symmetric(x, 127.0 if fmt == KV_INT8 else FP8_MAX, fmt == KV_INT8)
    return stored.to(pool_dtype), scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Bytes ``[..., head_dim // 2]`` -> their 4-bit values ``[..., head_dim]`` as float32."""
    return torch.stack([packed & 15, packed >> 4], -1).flatten(-2).float()


_FP8_VALUES: dict[torch.device, torch.Tensor] = {}


def fp8_to_float(rows: torch.Tensor) -> torch.Tensor:
    """fp8 e4m3 values as float32, looked up by their bytes: on a CPU, 2.7 times faster than
    torch's own cast (1.5M values: 2.6 ms against 7 ms)."""
    table = _FP8_VALUES.get(rows.device)
    if table is None:
        table = _FP8_VALUES[rows.device] = (
            torch.arange(256, dtype=torch.uint8).view(FP8).float()[:, None].to(rows.device)
        )
    return torch.nn.functional.embedding(rows.view(torch.uint8).int(), table)[..., 0]


def dequantize(rows: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``[..., stored dim]`` read from a pool (of ``rows.dtype``) -> ``[..., head_dim]`` in
    ``dtype``. ``scale``: what the pool keeps for each row, ``[...]`` (int8, fp8) or ``[...,
    2 * groups]`` (int4)."""
    fmt = kv_format(rows.dtype)
    if fmt == KV_FLOAT:
        return rows.to(dtype)
    if fmt == KV_INT4:
        groups = unpack_int4(rows).unflatten(-1, (-1, INT4_GROUP))
        scale, zero = scale.float()[..., None].chunk(2, -2)
        return (groups * scale + zero).flatten(-2).to(dtype)
    values = fp8_to_float(rows) if fmt == KV_FP8 else rows.float()
    return (values * scale[..., None]).to(dtype)
