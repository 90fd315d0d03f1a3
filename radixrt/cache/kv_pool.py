"""The KV pool: every layer's K and V pages in two preallocated tensors."""

from __future__ import annotations

import torch

QUANTIZED = (torch.int8,)  # stored with a scale per token and KV head (``value / scale``)
SCALE_DTYPE = torch.float32


class KVPool:
    """K and V storage for ``num_pages`` pages of ``page_size`` tokens.

    ``k[layer]`` and ``v[layer]`` are ``[num_pages, page_size, kv_heads, head_dim]``; page ids from a
    :class:`~radixrt.cache.PageAllocator` of the same ``num_pages`` index their first dimension.
    An int8 pool also has ``k_scale``/``v_scale``, ``[layers, num_pages, page_size, kv_heads]``
    float32: a page's scales live with it, so a shared or moved page dequantizes the same.
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
        scale_bytes = SCALE_DTYPE.itemsize if dtype in QUANTIZED else 0
        self.bytes_per_token = 2 * num_layers * kv_heads * (head_dim * dtype.itemsize + scale_bytes)
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
        shape = (num_layers, num_pages, page_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.k_scale = self.v_scale = None  # quantized: a scale per token and KV head, with its page
        if dtype in QUANTIZED:
            self.k_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=device)
            self.v_scale = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=device)

    def scales(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One layer's K and V scales (``[num_pages, page_size, kv_heads]``), or None unquantized."""
        if self.k_scale is None:
            return None, None
        return self.k_scale[layer], self.v_scale[layer]

    def tensors(self) -> list[torch.Tensor]:
        """Everything a page is made of, each ``[layers, num_pages, ...]``: what moves with a page."""
        return [t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None]

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
