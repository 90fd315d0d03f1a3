"""The pieces every decoder family here shares: RMSNorm, rotary embeddings, the gated MLP, and
the paged attention call that stores a layer's new K/V and attends through the page table."""

from __future__ import annotations

import torch
from torch import nn

from radixrt.cache import KVPool
from radixrt.kernels.attention import PagedKV, decode_attention, extend_attention, write_kv
from radixrt.model.batch import ForwardBatch

ACTIVATIONS = {
    "silu": nn.functional.silu,
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class RMSNorm(nn.Module):
    """``offset`` 1 is Gemma's norm: the weight is stored as ``w`` and applied as ``1 + w``, in float32."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (h * (self.offset + self.weight.float())).to(x.dtype)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """RoPE with transformers' parameters (``inv_freq`` and the ``attention_scaling`` folded into
    cos/sin, scaling variants included). ``interleaved``: DeepSeek's layout, channel pairs (2i,
    2i + 1) rotate together; the rotated halves come out de-interleaved, which changes nothing for
    attention as queries and keys are laid out alike."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, interleaved: bool = False) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.scaling, self.interleaved = float(scaling), interleaved

    def angles(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[tokens, 1, dim]``; angles in float64, exact past 2**24 too."""
        freqs = positions.double()[:, None] * self.inv_freq.double()[None, :]
        angles = freqs if self.interleaved else torch.cat([freqs, freqs], dim=-1)
        cos = (angles.cos() * self.scaling).to(dtype)[:, None]
        return cos, (angles.sin() * self.scaling).to(dtype)[:, None]

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x [tokens, heads, dim]``."""
        if self.interleaved:
            even, odd = x[..., 0::2], x[..., 1::2]
            return torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``: SwiGLU (Llama, Qwen, DeepSeek) or GeGLU (Gemma)."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool = False) -> None:
        super().__init__()
        self.act = activation(act)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def store_kv(k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch, pool: KVPool, layer: int) -> PagedKV:
    """Store the new tokens' ``k``/``v`` (``[tokens, kv_heads, dim]``; with a pool whose V lives in
    K's rows only K is stored) at their slots: the layer's pages with the batch's page table."""
    k_pool, v_pool = pool.k[layer], pool.v[layer]
    scales = pool.scales(layer)  # (None, None) unless the pool is quantized
    write_kv(k_pool, v_pool, batch.slots, k, None if pool.v_in_k else v, *scales)
    return PagedKV(k_pool, v_pool, batch.kv_indptr, batch.kv_indices, *scales)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: ForwardBatch,
    pool: KVPool,
    layer: int,
    scale: float | None = None,
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Store the new tokens' ``k``/``v`` (``[tokens, kv_heads, dim]``; with a pool whose V lives in
    K's rows, ``v`` is ``k``'s first channels and only K is stored) and attend ``q [tokens, heads,
    k_dim]`` through the page table (within a sliding ``window`` when not 0; with attention
    ``sinks``, a float32 logit per head; scores soft-capped at ``softcap`` when not 0): ``[tokens,
    heads, v_dim]``."""
    kv = store_kv(k, v, batch, pool, layer)
    options = dict(sm_scale=scale, window=window, sinks=sinks, softcap=softcap)
    if batch.decode:
        return decode_attention(q, kv, batch.prefix_lens + 1, max_seq_len=batch.max_seq_len, **options)
    return extend_attention(
        q, k, v, kv, batch.qo_indptr, batch.prefix_lens, max_extend_len=batch.max_new_tokens, **options
    )
