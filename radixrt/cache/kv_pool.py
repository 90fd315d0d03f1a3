"""The KV pool: every layer's K and V pages in two preallocated tensors."""

from __future__ import annotations

import math

import torch

from radixrt.kernels.layout import kv_format, scale_spec, stored_dim


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
    """

    def __init__(
        self,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        page_size: int,
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
        self.num_layers, self.kv_heads, self.head_dim, self.page_size = num_layers, kv_heads, head_dim, page_size
        self.dtype = dtype
        scales = scale_spec(kv_format(dtype), head_dim)  # ValueError for an unknown dtype or head_dim
        scale_bytes = math.prod(scales[0]) * scales[1].itemsize if scales else 0
        row = stored_dim(head_dim, dtype) * dtype.itemsize + scale_bytes
        self.bytes_per_token = 2 * num_layers * kv_heads * row
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
        self.v = torch.zeros_like(self.k)
        self.k_scale = self.v_scale = None
        if scales:
            self.k_scale = torch.ones(*slots, *scales[0], dtype=scales[1], device=device)
            self.v_scale = torch.ones_like(self.k_scale)

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One layer's K and V scales (``[num_pages, page_size, kv_heads, ...]``), or None unquantized."""
        if self.k_scale is None:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]

    def tensors(self) -> list[torch.Tensor]:
        """Everything a page is made of, each ``[layers, num_pages, ...]``: what moves with a page.
        fp8 comes as its bytes (uint8 views): torch has no index copies of fp8 on a CPU."""
        parts = [t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None]
        return [t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t for t in parts]

    @property
    def num_tokens(self) -> int:
        return self.num_pages * self.page_size

    @property
    def nbytes(self) -> int:
        return self.num_pages * self.bytes_per_page

    def __repr__(self) -> str:
        return (
            f"KVPool({self.num_pages} pages x {self.page_size} tokens, {self.num_layers} layers, "
            f"{self.kv_heads} kv heads x {self.head_dim}, {self.dtype}, {self.nbytes / 2**20:.1f} MiB)"
        )
