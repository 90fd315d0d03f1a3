"""One layer's paged K/V together with a batch's page table, validated once for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8 = getattr(torch, "float8_e4m3fn", None)
INT8_SCALE_FLOOR = 1e-8
"""The smallest per-token int8 scale: an all-zero vector still gets a finite, non-zero scale."""


def check_head_dim(head_dim: int) -> None:
    """The kernels tile the head dimension in powers of two of at least 16."""
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")


@dataclass(frozen=True)
class PagedKV:
    """``k``/``v``: ``[num_pages, page_size, kv_heads, head_dim]``, contiguous (one layer of a
    :class:`~radixrt.cache.KVPool`). Sequence b's pages are ``indices[indptr[b]:indptr[b+1]]`` in
    order; token t of the sequence lives at page ``t // page_size``, offset ``t % page_size``.
    An fp8 (e4m3) pool stores ``value / scale`` with one float32 scale per KV head ``[kv_heads]``;
    an int8 pool stores ``round(value / scale)`` with a float32 scale per token and KV head,
    ``[num_pages, page_size, kv_heads]``, kept beside the pages so that it follows the page id."""

    k: torch.Tensor
    v: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    @property
    def page_size(self) -> int:
        return self.k.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.k.shape[3]

    @property
    def quantized(self) -> bool:
        """Whether the pool holds fp8 or int8 values that need their scales."""
        return self.fp8 or self.int8

    @property
    def fp8(self) -> bool:
        return FP8 is not None and self.k.dtype == FP8

    @property
    def int8(self) -> bool:
        return self.k.dtype == torch.int8

    def check(self, q: torch.Tensor, batch: int) -> None:
        """Raise ``ValueError`` naming the problem unless ``q`` and this page table fit together."""
        if q.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"queries must be float32, float16 or bfloat16, got {q.dtype}")
        if self.k.dim() != 4 or self.k.shape != self.v.shape:
            raise ValueError(
                "K and V pools must both be [num_pages, page_size, kv_heads, head_dim], "
                f"got {tuple(self.k.shape)} and {tuple(self.v.shape)}"
            )
        if not (self.k.is_contiguous() and self.v.is_contiguous()):
            raise ValueError("K and V pools must be contiguous")
        q_heads, head_dim = q.shape[-2:]
        if head_dim != self.head_dim:
            raise ValueError(f"queries have head_dim {head_dim}, the KV pool {self.head_dim}")
        check_head_dim(head_dim)
        if q_heads % self.kv_heads:
            raise ValueError(f"{q_heads} query heads do not divide into {self.kv_heads} KV heads")
        if self.int8:
            if self.v.dtype != torch.int8:
                raise ValueError(f"the K pool is int8 but the V pool is {self.v.dtype}")
            check_int8_scales(self.k, self.k_scale, self.v_scale)
        elif self.fp8:
            for name, scale in (("k_scale", self.k_scale), ("v_scale", self.v_scale)):
                if scale is None or scale.shape != (self.kv_heads,) or scale.dtype != torch.float32:
                    raise ValueError(f"an fp8 KV pool needs {name}: float32 [{self.kv_heads}] (one per KV head)")
        elif self.k.dtype != q.dtype or self.v.dtype != q.dtype:
            raise ValueError(f"KV pool dtype {self.k.dtype} does not match the queries' {q.dtype} (nor is it fp8 e4m3)")
        if self.indptr.dtype != torch.int32 or self.indices.dtype != torch.int32:
            raise ValueError("kv_indptr and kv_indices must be int32")
        if self.indptr.shape != (batch + 1,):
            raise ValueError(f"kv_indptr must have batch + 1 = {batch + 1} entries, got {tuple(self.indptr.shape)}")

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scales (per head for fp8, per token and head for int8), or ones when the pool is
        not quantised (kernels take a pointer either way)."""
        if self.quantized:
            return self.k_scale, self.v_scale
        ones = torch.ones(self.kv_heads, dtype=torch.float32, device=self.k.device)
        return ones, ones


def check_write(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> str | None:
    """Raise ``ValueError`` naming the problem; returns the pool's quantisation: ``"fp8"``,
    ``"int8"`` or ``None``."""
    shape = (slots.numel(), *k_pool.shape[2:])
    if k_pool.shape != v_pool.shape or not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("K and V pools must be contiguous [num_pages, page_size, kv_heads, head_dim] of one shape")
    if k_new.shape != shape or v_new.shape != shape:
        raise ValueError(f"new K and V must be {list(shape)}, got {list(k_new.shape)} and {list(v_new.shape)}")
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:
        raise ValueError("new K and V must be contiguous in head_dim")
    if k_pool.dtype == torch.int8:
        if v_pool.dtype != torch.int8:
            raise ValueError(f"the K pool is int8 but the V pool is {v_pool.dtype}")
        if not (k_new.is_floating_point() and v_new.is_floating_point()):
            raise ValueError(f"new K/V for an int8 pool must be floating point, got {k_new.dtype} and {v_new.dtype}")
        check_int8_scales(k_pool, k_scale, v_scale)
        return "int8"
    quantized = FP8 is not None and k_pool.dtype == FP8
    if quantized and (k_scale is None or v_scale is None):
        raise ValueError("an fp8 KV pool needs k_scale and v_scale (float32, one per KV head)")
    if not quantized and (k_pool.dtype != k_new.dtype or v_pool.dtype != v_new.dtype):
        raise ValueError(f"new K/V dtype {k_new.dtype} does not match the pool's {k_pool.dtype}")
    return "fp8" if quantized else None


def check_int8_scales(pool: torch.Tensor, k_scale: torch.Tensor | None, v_scale: torch.Tensor | None) -> None:
    """An int8 pool ``[num_pages, page_size, kv_heads, head_dim]`` needs contiguous float32 scales
    ``[num_pages, page_size, kv_heads]`` for K and for V: raise ``ValueError`` naming what is wrong."""
    shape = tuple(pool.shape[:3])
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if scale is None:
            raise ValueError(f"an int8 KV pool needs {name}: float32 {list(shape)} (one per token and KV head)")
        if tuple(scale.shape) != shape:
            raise ValueError(f"{name} of an int8 KV pool must be {list(shape)}, got {list(scale.shape)}")
        if scale.dtype != torch.float32:
            raise ValueError(f"{name} of an int8 KV pool must be float32, got {scale.dtype}")
        if not scale.is_contiguous():
            raise ValueError(f"{name} of an int8 KV pool must be contiguous")
        if scale.device != pool.device:
            raise ValueError(f"{name} is on {scale.device}, the int8 KV pool on {pool.device}")
