"""Random paged batches for the kernel tests, and running a Triton kernel where it runs."""

import dataclasses
import os

import numpy as np
import torch

from radixrt.kernels.layout import KV_FLOAT, PagedKV, kv_format, scale_spec, stored_dim

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def on_device(kernel):
    """``kernel`` over the tests' CPU tensors: interpreted on them without a GPU; with one, run on
    copies on the GPU, with every tensor argument (written in place or not) and the result copied
    back, so a test compares against the CPU reference the same way on both."""
    if not GPU:
        return kernel

    def run(*args, **kwargs):
        moved = []

        def to_gpu(x):
            if isinstance(x, PagedKV):
                if x.v_in_k:  # V stays a view of K's rows on the device too
                    k = to_gpu(x.k)
                    view = dict(v=k[..., : x.v.shape[-1]], v_scale=None if x.k_scale is None else to_gpu(x.k_scale))
                    rest = {f: to_gpu(getattr(x, f)) for f in ("indptr", "indices")}
                    return PagedKV(k=k, k_scale=view["v_scale"], **view, **rest)
                return PagedKV(**{f.name: to_gpu(getattr(x, f.name)) for f in dataclasses.fields(x)})
            if isinstance(x, torch.Tensor):
                moved.append((x, x.cuda()))
                return moved[-1][1]
            return x

        result = kernel(*map(to_gpu, args), **{k: to_gpu(v) for k, v in kwargs.items()})
        for cpu_tensor, gpu_tensor in moved:
            cpu_tensor.copy_(gpu_tensor)
        return result.cpu() if isinstance(result, torch.Tensor) else result

    return run


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the output (an element was never written?)"
    return float((out.double() - ref).norm() / ref.norm())


def random_pages(gen: torch.Generator, lens: list[int], page_size: int) -> tuple[list[torch.Tensor], int]:
    """Each sequence's page ids: even ids in random order, so no two are ever adjacent."""
    counts = [-(-n // page_size) for n in lens]
    ids = torch.randperm(sum(counts) + 1, generator=gen) * 2
    out, at = [], 0
    for c in counts:
        out.append(ids[at : at + c].to(torch.int32))
        at += c
    return out, 2 * (sum(counts) + 1)


def make_paged(gen, lens, page_size, kv_heads, head_dim, dtype, v_dim: int | None = None) -> PagedKV:
    """A pool whose unused pages hold NaN, so reading a wrong page fails the comparison; V has
    ``v_dim`` channels (``head_dim`` if None)."""
    pages, num_pages = random_pages(gen, lens, page_size)
    shape = (num_pages, page_size, kv_heads, head_dim)
    v_shape = (*shape[:3], head_dim if v_dim is None else v_dim)
    k = torch.full(shape, float("nan"), dtype=torch.float32)
    v = torch.full(v_shape, float("nan"), dtype=torch.float32)
    for p in pages:
        k[p.long()] = torch.randn(len(p), *shape[1:], generator=gen)
        v[p.long()] = torch.randn(len(p), *v_shape[1:], generator=gen)
    indptr = torch.tensor([0] + np.cumsum([len(p) for p in pages]).tolist(), dtype=torch.int32)
    indices = torch.cat(pages) if pages else torch.zeros(0, dtype=torch.int32)
    return PagedKV(k.to(dtype), v.to(dtype), indptr, indices)


def empty_pool(num_pages: int, page_size: int, kv_heads: int, head_dim: int, pool_dtype: torch.dtype):
    """One pool of ``pool_dtype`` and its scales (None for a float pool). Float pools and scales
    start NaN, so that reading a slot that was never written fails the comparison."""
    fmt = kv_format(pool_dtype)
    shape = (num_pages, page_size, kv_heads, stored_dim(head_dim, pool_dtype))
    pool = (
        torch.full(shape, float("nan"), dtype=pool_dtype) if fmt == KV_FLOAT else torch.zeros(shape, dtype=pool_dtype)
    )
    spec = scale_spec(fmt, head_dim)
    return pool, None if spec is None else torch.full((*shape[:3], *spec[0]), float("nan"), dtype=spec[1])


def empty_pools(
    num_pages: int, page_size: int, kv_heads: int, head_dim: int, pool_dtype: torch.dtype, v_dim: int | None = None
):
    """K and V pools (V of ``v_dim`` channels, ``head_dim`` if None) and their scales, as
    :func:`empty_pool` makes them: ``k, v, k_scale, v_scale``."""
    k, k_scale = empty_pool(num_pages, page_size, kv_heads, head_dim, pool_dtype)
    v, v_scale = empty_pool(num_pages, page_size, kv_heads, head_dim if v_dim is None else v_dim, pool_dtype)
    return k, v, k_scale, v_scale


def stored_copy(kv: PagedKV, pool_dtype: torch.dtype, write) -> PagedKV:
    """``kv``'s tokens (every slot of every page in its page table) written by ``write`` into a
    pool of ``pool_dtype``: a shared page is written once and then read by all its sequences."""
    page_size = kv.page_size
    pages = kv.indices.long().unique()
    slots = (pages[:, None] * page_size + torch.arange(page_size)).flatten()
    k, v, k_scale, v_scale = empty_pools(kv.k.shape[0], page_size, kv.kv_heads, kv.k_dim, pool_dtype, kv.v_dim)
    flat = kv.k.view(-1, kv.kv_heads, kv.k_dim), kv.v.view(-1, kv.kv_heads, kv.v_dim)
    write(k, v, slots.to(torch.int32), flat[0][slots], flat[1][slots], k_scale, v_scale)
    return PagedKV(k, v, kv.indptr, kv.indices, k_scale, v_scale)


def share_pages(kv: PagedKV, shares: dict[int, tuple[int, int]]) -> PagedKV:
    """The same pool with sequence b's first n pages replaced by sequence a's, for each
    ``b: (a, n)``: the page table of prefixes shared through the radix cache."""
    bounds = kv.indptr.tolist()
    pages = [kv.indices[lo:hi].clone() for lo, hi in zip(bounds, bounds[1:])]
    for b, (a, n) in shares.items():
        pages[b][:n] = pages[a][:n]
    return PagedKV(kv.k, kv.v, kv.indptr, torch.cat(pages), kv.k_scale, kv.v_scale)


def consecutive_pages(kv: PagedKV, b: int, n: int) -> PagedKV:
    """The same batch with sequence b's first n pages moved, data and all, to consecutive ids at
    the end of a larger pool, as a fresh allocation hands them out."""
    start = int(kv.indptr[b])
    old = kv.indices[start : start + n].long()
    indices = kv.indices.clone()
    indices[start : start + n] = torch.arange(kv.k.shape[0], kv.k.shape[0] + n, dtype=torch.int32)
    return PagedKV(
        torch.cat([kv.k, kv.k[old]]), torch.cat([kv.v, kv.v[old]]), kv.indptr, indices, kv.k_scale, kv.v_scale
    )
