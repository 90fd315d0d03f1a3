"""One layer's paged K/V together with a batch's page table, validated once for every backend,
and the KV formats a pool may hold.

Formats (``KV_FORMAT``, one constexpr for every kernel; :func:`kv_format` derives it from the
pool's dtype):

- ``KV_FLOAT`` (float32, float16, bfloat16): plain values, cast to and from the compute dtype.
- ``KV_INT8``: ``round(x / scale)`` in [-127, 127], ``scale = max |x| / 127`` per token and KV head.
- ``KV_FP8`` (float8 e4m3fn): ``x / scale`` saturated at +-448, ``scale = max |x| / 448`` per token
  and KV head. Both keep float32 scales ``[num_pages, page_size, kv_heads]``.
- ``KV_INT4`` (uint8 pool, :data:`INT4`): asymmetric per token, KV head and group of
  :data:`INT4_GROUP` channels, ``scale = (max - min) / 15``, ``zero = min``, both rounded to
  float16 before quantising, ``q = round((x - zero) / scale)`` in [0, 15], read as
  ``q * scale + zero``. Packed two channels a byte: byte j holds channel 2j in its low nibble and
  channel 2j + 1 in its high one, so ``k``/``v`` are ``[num_pages, page_size, kv_heads, head_dim
  // 2]``; the kernels unpack a row with ``tl.interleave(low, high)`` (supported by the
  interpreter and the sm90 compiler alike), and a byte's two channels share a group. Scales are
  float16 ``[num_pages, page_size, kv_heads, 2 * head_dim // INT4_GROUP]``: the groups' scales,
  then their zeros.

Every scale lives at its token's slot, beside the pages: a page shared by many sequences, or moved
between memory tiers, dequantises the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
"""The largest finite float8 e4m3fn: quantised values saturate here."""
INT4 = torch.uint8
INT4_GROUP = 16
"""Channels that share an int4 scale and zero: 16 costs 2 x 2 float16 bytes per 8 packed bytes. On
the default model, groups of 32 lost 4.8% perplexity against float32 K/V, groups of 16 under 2%
(``bench/bench_kv_dtype.py``): keys' outlier channels need the smaller groups."""
INT8_SCALE_FLOOR = 1e-8
"""The smallest per-token int8/fp8 scale: an all-zero vector still gets a finite, non-zero scale."""
INT4_SCALE_FLOOR = 2.0**-14
"""The smallest int4 scale: the smallest normal float16, so it survives rounding to float16."""

KV_FLOAT, KV_INT8, KV_FP8, KV_INT4 = 0, 1, 2, 3
FORMAT_NAMES = {KV_FLOAT: "float", KV_INT8: "int8", KV_FP8: "fp8", KV_INT4: "int4"}


def kv_format(dtype: torch.dtype) -> int:
    """The format of a pool of ``dtype``; ``ValueError`` for a dtype no kernel reads."""
    if dtype in COMPUTE_DTYPES:
        return KV_FLOAT
    if dtype == torch.int8:
        return KV_INT8
    if FP8 is not None and dtype == FP8:
        return KV_FP8
    if dtype == INT4:
        return KV_INT4
    raise ValueError(
        f"a KV pool must be float32, float16, bfloat16, float8_e4m3fn, int8 or uint8 (packed int4), got {dtype}"
    )


def stored_dim(head_dim: int, dtype: torch.dtype) -> int:
    """The last dimension of a pool of ``dtype``: int4 packs two channels a byte."""
    return head_dim // 2 if dtype == INT4 else head_dim


def logical_dim(stored: int, dtype: torch.dtype) -> int:
    """The head dim of a pool of ``dtype`` whose last dimension is ``stored``."""
    return stored * 2 if dtype == INT4 else stored


def scale_spec(fmt: int, head_dim: int) -> tuple[tuple[int, ...], torch.dtype] | None:
    """The trailing shape after ``[num_pages, page_size]`` and the dtype of a ``fmt`` pool's
    scales, or None when it has none."""
    if fmt == KV_FLOAT:
        return None
    if fmt == KV_INT4:
        check_int4_head_dim(head_dim)
        return (2 * head_dim // INT4_GROUP,), torch.float16
    return (), torch.float32


MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_MULTIPLE = 16, 576, 8
MAX_V_HEAD_DIM = 512
"""K head dims go up to 576 and V ones to 512: DeepSeek's MLA in its absorbed form (K 576, V 512)."""


def check_head_dim(head_dim: int, v_dim: int | None = None) -> None:
    """The head dims the kernels run: a multiple of 8 from 16 to 576 for K (queries), to 512 for V
    (outputs); ``v_dim`` None means V has ``head_dim`` too. The Triton kernels pad each to its
    next power of two (``BLOCK_DK``, ``BLOCK_DV``: what ``tl.arange`` needs), masking the channels
    past it; a multiple of 8 keeps every row 16-byte aligned in a 16-bit dtype (vector loads), at
    least 16 feeds ``tl.dot``, and past 576 a tile no longer fits on chip even with small key
    blocks. (An int4 pool asks more: see ``check_int4_head_dim``.)"""
    checks = (
        [("head_dim", head_dim, MAX_V_HEAD_DIM)]
        if v_dim is None
        else [("K head_dim", head_dim, MAX_HEAD_DIM), ("V head_dim", v_dim, MAX_V_HEAD_DIM)]
    )
    for name, dim, most in checks:
        if not MIN_HEAD_DIM <= dim <= most or dim % HEAD_DIM_MULTIPLE:
            raise ValueError(
                f"{name} must be a multiple of {HEAD_DIM_MULTIPLE} from {MIN_HEAD_DIM} to {most}, got {dim}"
            )


def check_int4_head_dim(head_dim: int) -> None:
    if head_dim < INT4_GROUP or head_dim % INT4_GROUP:
        raise ValueError(
            f"an int4 KV pool needs head_dim a multiple of {INT4_GROUP} (its channels are quantised in "
            f"groups of {INT4_GROUP} and packed two a byte), got head_dim {head_dim}"
        )


def check_scales(
    fmt: int,
    pool: torch.Tensor,
    dims: tuple[int, int],  # the logical channels of a stored K row and V row
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> None:
    """A quantised pool ``[num_pages, page_size, kv_heads, ...]`` of K and V head dims ``dims``
    needs contiguous scales for K and for V of the shapes and dtype :func:`scale_spec` gives:
    raise ``ValueError`` naming what is wrong."""
    if fmt == KV_FLOAT:
        return
    what = f"an {FORMAT_NAMES[fmt]} KV pool"
    per = "token, KV head and channel group (scales then zeros)" if fmt == KV_INT4 else "token and KV head"
    for name, scale, head_dim in (("k_scale", k_scale, dims[0]), ("v_scale", v_scale, dims[1])):
        trailing, dtype = scale_spec(fmt, head_dim)
        shape, dtype_name = (*pool.shape[:3], *trailing), str(dtype).removeprefix("torch.")
        if scale is None:
            raise ValueError(f"{what} needs {name}: {dtype_name} {list(shape)} (one per {per})")
        if tuple(scale.shape) != shape:
            raise ValueError(f"{name} of {what} must be {list(shape)}, got {list(scale.shape)}")
        if scale.dtype != dtype:
            raise ValueError(f"{name} of {what} must be {dtype_name}, got {scale.dtype}")
        if not scale.is_contiguous():
            raise ValueError(f"{name} of {what} must be contiguous")
        if scale.device != pool.device:
            raise ValueError(f"{name} is on {scale.device}, {what} on {pool.device}")


def v_in_k(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the V pool is the first channels of the K pool's rows (``v = k[..., :v_dim]``): MLA
    caches one latent per token, whose first ``kv_lora_rank`` channels serve as V."""
    return (
        v.dim() == k.dim() == 4
        and v.data_ptr() == k.data_ptr()
        and v.shape[:3] == k.shape[:3]
        and v.shape[3] <= k.shape[3]
        and v.stride() == k.stride()
    )


def check_pools(k: torch.Tensor, v: torch.Tensor) -> int:
    """K and V pools of one known dtype, 4-d, contiguous (or V the first channels of K's rows, see
    :func:`v_in_k`), alike but (maybe) in their head dims: their format, or ``ValueError``."""
    fmt = kv_format(k.dtype)
    if v.dtype != k.dtype:
        raise ValueError(f"the K pool is {FORMAT_NAMES[fmt]} but the V pool is {v.dtype}")
    if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            "K and V pools must be [num_pages, page_size, kv_heads, K / V head_dim (/ 2 packed int4)], "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if not (k.is_contiguous() and (v.is_contiguous() or v_in_k(k, v))):
        raise ValueError("K and V pools must be contiguous (or V the first channels of K: k[..., :v_dim])")
    return fmt


def v_row_dim(k: torch.Tensor, v: torch.Tensor) -> int:
    """The logical channels of one stored V row: K's when V lives in K's rows, else V's own."""
    return logical_dim((k if v_in_k(k, v) else v).shape[3], k.dtype)


@dataclass(frozen=True)
class PagedKV:
    """``k``: ``[num_pages, page_size, kv_heads, k_dim]``, ``v``: ``[..., v_dim]`` (``dim // 2``
    bytes for int4; ``k_dim`` may differ from ``v_dim``, as in DeepSeek's MLA), contiguous (one
    layer of a :class:`~radixrt.cache.KVPool`), with their scales when quantised (see the module).
    Sequence b's pages are ``indices[indptr[b]:indptr[b+1]]`` in order; token t of the sequence
    lives at page ``t // page_size``, offset ``t % page_size``."""

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
    def format(self) -> int:
        """``KV_FLOAT``, ``KV_INT8``, ``KV_FP8`` or ``KV_INT4``: the kernels' ``KV_FORMAT``."""
        return kv_format(self.k.dtype)

    @property
    def k_dim(self) -> int:
        """K's logical head dim (twice the stored bytes of an int4 pool): the queries'."""
        return logical_dim(self.k.shape[3], self.k.dtype)

    @property
    def v_dim(self) -> int:
        """V's logical head dim: the outputs'."""
        return logical_dim(self.v.shape[3], self.v.dtype)

    @property
    def v_in_k(self) -> bool:
        """V is the first ``v_dim`` channels of K's rows (MLA's latent), read with K's scales."""
        return v_in_k(self.k, self.v)

    @property
    def head_dim(self) -> int:
        """K's head dim (:attr:`k_dim`), the only one when K and V have the same."""
        return self.k_dim

    @property
    def quantized(self) -> bool:
        return self.format != KV_FLOAT

    def check(self, q: torch.Tensor, batch: int) -> None:
        """Raise ``ValueError`` naming the problem unless ``q`` and this page table fit together.
        Shapes and dtypes only, never the tensors' values: no device sync (CUDA-graph safe)."""
        if q.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"queries must be float32, float16 or bfloat16, got {q.dtype}")
        fmt = check_pools(self.k, self.v)
        q_heads, head_dim = q.shape[-2:]
        if head_dim != self.k_dim:
            raise ValueError(f"queries have head_dim {head_dim}, the K pool {self.k_dim}")
        check_head_dim(self.k_dim, self.v_dim)
        if q_heads % self.kv_heads:
            raise ValueError(f"{q_heads} query heads do not divide into {self.kv_heads} KV heads")
        check_scales(fmt, self.k, (self.k_dim, v_row_dim(self.k, self.v)), self.k_scale, self.v_scale)
        if self.indptr.dtype != torch.int32 or self.indices.dtype != torch.int32:
            raise ValueError("kv_indptr and kv_indices must be int32")
        if self.indptr.shape != (batch + 1,):
            raise ValueError(f"kv_indptr must have batch + 1 = {batch + 1} entries, got {tuple(self.indptr.shape)}")

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scales, or a dummy when the pool is not quantised (kernels take a pointer either way)."""
        if self.quantized:
            return self.k_scale, self.v_scale
        ones = torch.ones(1, dtype=torch.float32, device=self.k.device)
        return ones, ones


def check_write(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor | None,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> int:
    """Raise ``ValueError`` naming the problem; returns the pool's format (``KV_FLOAT`` ...). Shapes
    and dtypes only: no device sync (CUDA-graph safe). ``v_new`` None: V lives in K's rows (then
    ``v_pool`` must be such a view, see :func:`v_in_k`) and only K is written."""
    fmt = check_pools(k_pool, v_pool)
    if v_new is None:
        if not v_in_k(k_pool, v_pool):
            raise ValueError("v_new may be left out only when V is the first channels of K's rows (MLA)")
        v_new, v_scale = k_new, k_scale
    elif v_in_k(k_pool, v_pool):
        raise ValueError("V lives in K's rows here (MLA's latent): write K alone, with v_new=None")
    dims = logical_dim(k_pool.shape[3], k_pool.dtype), v_row_dim(k_pool, v_pool)
    k_shape, v_shape = ((slots.numel(), k_pool.shape[2], dim) for dim in dims)
    if k_new.shape != k_shape or v_new.shape != v_shape:
        raise ValueError(
            f"new K and V must be {list(k_shape)} and {list(v_shape)}, got {list(k_new.shape)} and {list(v_new.shape)}"
        )
    if k_new.stride(-1) != 1 or v_new.stride(-1) != 1:
        raise ValueError("new K and V must be contiguous in head_dim")
    if not (k_new.dtype in COMPUTE_DTYPES and v_new.dtype in COMPUTE_DTYPES):
        raise ValueError(f"new K and V must be float32, float16 or bfloat16, got {k_new.dtype} and {v_new.dtype}")
    check_scales(fmt, k_pool, dims, k_scale, v_scale)  # first: int4's own rule on the dims is the more telling
    check_head_dim(dims[0], logical_dim(v_pool.shape[3], v_pool.dtype))
    return fmt
