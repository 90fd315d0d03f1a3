"""Paged attention over the KV pool: Triton kernels on a GPU, a vectorised PyTorch path on a CPU.

The folder ``kernels/`` is installed as ``radixrt.kernels``: kept outside ``radixrt/`` so it knows
nothing of the rest of the runtime. It has no ``__init__.py`` on purpose: a folder that is not a
package never shadows a real one, so with the repository root on ``sys.path`` (``python -m pytest``,
``python -m radixrt``) ``import kernels`` still finds the unrelated PyPI package that transformers
imports. This module is the entry point: ``from radixrt.kernels.attention import decode_attention``.

Page table layout: CSR. Sequence b's pages are ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]`` (int32
physical page ids, in order), and token t of the sequence lives at page ``t // page_size``,
offset ``t % page_size``. Chosen over a ``[batch, max_pages]`` table because:
- it is exactly what the radix cache hands out: a request's page list is the matched prefix's
  pages followed by its own, so building the batch table is one concatenation, with no padding;
- its size follows the pages actually used, so a batch that mixes a 1-token and a 32k-token
  sequence does not pay ``batch x max_pages`` to build, copy or read;
- a kernel still finds page t of sequence b with one load, ``kv_indices[kv_indptr[b] + t // page_size]``.

Operations (each takes one layer's pools, K ``[num_pages, page_size, kv_heads, k_dim]`` and V
``[..., v_dim]``: the head dims may differ, as in DeepSeek's MLA, K 192 / V 128 or K 576 / V 512;
queries have ``k_dim`` and outputs ``v_dim``, ``sm_scale`` defaults to ``k_dim ** -0.5``):
- ``decode_attention``: one new token per sequence over its cached tokens (flash-decoding).
  CUDA-graph capturable when given ``num_splits`` (no device-to-host sync then).
- ``extend_attention``: the new tokens of a ragged batch over their cached prefix and, causally,
  each other.
- Both take ``window``: a sliding window (Gemma 3's local layers), where a token sees only the keys
  less than ``window`` positions back; tiles wholly behind it are never read. 0 (the default): none.
  And ``sinks`` (float32 ``[q_heads]``, gpt-oss): a logit per query head that joins the softmax
  with no value; and ``softcap`` (Gemma 2): scores become ``softcap * tanh(score / softcap)``.
- ``write_kv``: store new tokens' K/V at their slots ``page * page_size + offset`` (capturable).

KV formats (``radixrt.kernels.layout`` has the details; the scales ride along as
``PagedKV(k_scale=, v_scale=)`` and ``write_kv(..., k_scale, v_scale)``, ``write_kv`` computes
them, and the kernels dequantise each K/V row in registers as they load it):
- float32, float16, bfloat16: any of them with queries of any of them (cast on load and store).
- int8 and fp8 (e4m3fn): symmetric per token and KV head, ``scale = max |x| / 127`` (or ``/ 448``),
  float32 scales ``[num_pages, page_size, kv_heads]``.
- int4 (a uint8 pool ``[num_pages, page_size, kv_heads, head_dim // 2]``, two channels a byte):
  asymmetric per token, KV head and group of 16 channels (INT4_GROUP), float16 scales and zeros
  ``[num_pages, page_size, kv_heads, 2 * head_dim // 32]``.
The scales live with the pages: a page shared by many sequences, or moved between tiers, reads the
same for all.
``radixrt.kernels.reference`` has the same operations written plainly: the ground truth.

Backend: ``$RADIXRT_ATTENTION``, read once at import (see :data:`ATTENTION`). ``auto`` (the
default) runs the Triton kernels on CUDA tensors and the PyTorch path on CPU tensors; ``triton``
runs the kernels on CPU tensors too, which needs ``TRITON_INTERPRET=1`` set before triton is
imported: that is how the tests run the whole engine through the kernels without a GPU.
"""

from __future__ import annotations

import os

import torch

from radixrt.kernels import cpu
from radixrt.kernels.layout import PagedKV, check_head_dim

ATTENTION_BACKENDS = ("auto", "triton")


def attention_backend() -> str:
    """``$RADIXRT_ATTENTION``, validated. There is no way to force the PyTorch path onto CUDA
    tensors: it builds its gather indices on the CPU."""
    value = os.environ.get("RADIXRT_ATTENTION", "auto").strip().lower() or "auto"
    if value not in ATTENTION_BACKENDS:
        raise ValueError(f"RADIXRT_ATTENTION must be one of {', '.join(ATTENTION_BACKENDS)}, got {value!r}")
    return value


ATTENTION = attention_backend()
"""The backend chosen at import; tests that run both paths in one process set this attribute."""


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or ATTENTION == "triton"


def _triton():
    from radixrt.kernels import decode, extend, kv_write  # triton is only needed on a GPU

    return decode, extend, kv_write


def decode_attention(q: torch.Tensor, kv: PagedKV, seq_lens: torch.Tensor, **options) -> torch.Tensor:
    if _use_triton(q):
        return _triton()[0].decode_attention(q, kv, seq_lens, **options)
    return cpu.decode_attention(q, kv, seq_lens, **options)


def extend_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    kv: PagedKV,
    qo_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    **options,
) -> torch.Tensor:
    if _use_triton(q):
        return _triton()[1].extend_attention(q, k_new, v_new, kv, qo_indptr, prefix_lens, **options)
    return cpu.extend_attention(q, k_new, v_new, kv, qo_indptr, prefix_lens, **options)


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    impl = _triton()[2].write_kv if _use_triton(k_pool) else cpu.write_kv
    impl(k_pool, v_pool, slots, k_new, v_new, k_scale, v_scale)


__all__ = [
    "ATTENTION",
    "PagedKV",
    "attention_backend",
    "check_head_dim",
    "decode_attention",
    "extend_attention",
    "write_kv",
]
