"""The KV pool: every layer's K and V pages in two preallocated tensors."""

from __future__ import annotations

import math

import torch

from radixrt.kernels.layout import kv_format, scale_spec, stored_dim


def row_bytes(head_dim: int, dtype: torch.dtype, scales: tuple | None) -> int:
    """The bytes of one token's vector for one KV head, with its scales."""
    return stored_dim(head_dim, dtype) * dtype.itemsize + (math.prod(scales[0]) * scales[1].itemsize if scales else 0)


class KVPool:
    """K and V storage for ``num_pages`` pages of ``page_size`` tokens.

    ``k[layer]`` and ``v[layer]`` are ``[num_pages, page_size, kv_heads, head_dim]`` (``head_dim //
    2`` bytes for a packed int4 pool, ``dtype=torch.uint8``); page ids from a
    :class:`~radixrt.cache.PageAllocator` of the same ``num_pages`` index their first dimension.
    A quantised pool also has ``k_scale``/``v_scale``: ``[layers, num_pages, page_size, kv_heads]``
    float32 (int8, fp8) or ``[..., kv_heads, 2 * head_dim // 32]`` float16 (int4's group scales and
    zeros); a page's scales live with it, so a shared or moved page dequantizes the same. The
    formats are :mod:`radixrt.kernels.layout`'s.
    Size it by ``num_pages`` or by a byte budget (``max_bytes``), not both.

    ``v_head_dim`` gives V its own head dim (DeepSeek's MLA non-absorbed, K 192 / V 128). With
    ``v_in_k`` no V is stored at all: ``v[layer]`` is a view of the first ``v_head_dim`` channels of
    K's rows, read with K's scales. That is MLA's cache: one "head" per token holding the compressed
    latent (``kv_lora_rank`` channels, which serve as V) and then the decoupled RoPE key.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        page_size: int,
        v_head_dim: int | None = None,
        v_in_k: bool = False,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        num_pages: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("kv_heads", kv_heads),
            ("head_dim", head_dim),
            ("page_size", page_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if (num_pages is None) == (max_bytes is None):
            raise ValueError("size the KV pool by exactly one of num_pages or max_bytes")
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        if v_head_dim < 1 or (v_in_k and v_head_dim > head_dim):
            limit = f" and at most head_dim ({head_dim}) when V lives in K's rows" if v_in_k else ""
            raise ValueError(f"v_head_dim must be positive{limit}, got {v_head_dim}")
        self.num_layers, self.kv_heads, self.head_dim, self.page_size = num_layers, kv_heads, head_dim, page_size
        self.v_head_dim, self.v_in_k, self.dtype = v_head_dim, v_in_k, dtype
        fmt = kv_format(dtype)  # ValueError for an unknown dtype
        k_scales, v_scales = scale_spec(fmt, head_dim), scale_spec(fmt, v_head_dim)
        per_head = row_bytes(head_dim, dtype, k_scales) + (0 if v_in_k else row_bytes(v_head_dim, dtype, v_scales))
        self.bytes_per_token = num_layers * kv_heads * per_head
        self.bytes_per_page = self.bytes_per_token * page_size
        if max_bytes is not None:
            num_pages = max_bytes // self.bytes_per_page
            if num_pages < 1:
                raise ValueError(
                    f"a KV budget of {max_bytes} bytes holds no page: one page of {page_size} tokens "
                    f"needs {self.bytes_per_page} bytes ({self.bytes_per_token} bytes per token)"
                )
        elif num_pages < 1:
            raise ValueError(f"num_pages must be positive, got {num_pages}")
        self.num_pages = num_pages
        slots = (num_layers, num_pages, page_size, kv_heads)
        self.k = torch.zeros(*slots, stored_dim(head_dim, dtype), dtype=dtype, device=device)
        self.k_scale = torch.ones(*slots, *k_scales[0], dtype=k_scales[1], device=device) if k_scales else None
        if v_in_k:
            self.v, self.v_scale = self.k[..., : stored_dim(v_head_dim, dtype)], self.k_scale
        else:
            self.v = torch.zeros(*slots, stored_dim(v_head_dim, dtype), dtype=dtype, device=device)
            self.v_scale = torch.ones(*slots, *v_scales[0], dtype=v_scales[1], device=device) if v_scales else None

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One layer's K and V scales (``[num_pages, page_size, kv_heads, ...]``), or None unquantized."""
        if self.k_scale is None:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]

    def tensors(self) -> list[torch.Tensor]:
        """Everything a page is made of, each ``[layers, num_pages, ...]``: what moves with a page.
        fp8 comes as its bytes (uint8 views): torch has no index copies of fp8 on a CPU."""
        stored = (self.k, self.k_scale) if self.v_in_k else (self.k, self.v, self.k_scale, self.v_scale)
        parts = [t for t in stored if t is not None]
        return [t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t for t in parts]

    @property
    def num_tokens(self) -> int:
        return self.num_pages * self.page_size

    @property
    def nbytes(self) -> int:
        return self.num_pages * self.bytes_per_page

    @property
    def v_layout(self) -> str:
        if self.v_in_k:
            return f" (V: its first {self.v_head_dim})"
        return f" (V x {self.v_head_dim})" if self.v_head_dim != self.head_dim else ""

    def __repr__(self) -> str:
        return (
            f"KVPool({self.num_pages} pages x {self.page_size} tokens, {self.num_layers} layers, "
            f"{self.kv_heads} kv heads x {self.head_dim}{self.v_layout}, {self.dtype}, {self.nbytes / 2**20:.1f} MiB)"
        )
