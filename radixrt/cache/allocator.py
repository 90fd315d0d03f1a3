"""Physical KV page ids: a free stack with ownership checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radixrt.cache.ids import ID_DTYPE, IdArray, as_ids


class PageAllocator:
    """Hands out page ids ``0 .. num_pages-1``.

    Freed pages go back on a stack, so the most recently freed page is reused first
    (its KV rows are the likeliest to still be in a cache line). An allocation takes the top of
    the stack in ascending order, so a fresh pool hands out 0, 1, 2, ... and a long prompt's pages
    tend to be consecutive in memory (attention can then read such a run in place). Every free is checked:
    an id outside the pool, an id that is already free, or the same id twice in one call
    raises ``ValueError`` and changes nothing.
    """

    def __init__(self, num_pages: int) -> None:
        if num_pages < 1:
            raise ValueError(f"a page allocator needs at least one page, got num_pages={num_pages}")
        self.num_pages = num_pages
        self.reset()

    def available(self) -> int:
        return self._top

    def used(self) -> int:
        return self.num_pages - self._top

    def alloc(self, n: int) -> IdArray | None:
        """``n`` free page ids, or None (and nothing taken) when fewer than ``n`` are free."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > self._top:
            return None
        pages = self._stack[self._top - n : self._top][::-1].copy()
        self._top -= n
        self._is_free[pages] = False
        return pages

    def free(self, pages: Sequence[int] | np.ndarray) -> None:
        pages = as_ids(pages, "page ids")
        if pages.size == 0:
            return
        self._check_in_pool(pages)
        already = self._is_free[pages]
        if already.any():
            raise ValueError(f"double free: page(s) {pages[already][:8].tolist()} are already free")
        if pages.size > 1:
            ordered = np.sort(pages)
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            if repeated.size:
                raise ValueError(f"double free: page(s) {np.unique(repeated)[:8].tolist()} appear twice in one free")
        self._is_free[pages] = True
        self._stack[self._top : self._top + pages.size] = pages
        self._top += pages.size

    def is_free(self, page: int) -> bool:
        return bool(self._is_free[page])

    def _check_in_pool(self, pages: IdArray) -> None:
        lo, hi = int(pages.min()), int(pages.max())
        if lo < 0 or hi >= self.num_pages:
            bad = lo if lo < 0 else hi
            raise ValueError(f"page id {bad} does not belong to this pool (valid ids: 0..{self.num_pages - 1})")

    def reset(self) -> None:
        """Every page free again (the caller guarantees nobody holds one)."""
        self._stack = np.arange(self.num_pages - 1, -1, -1, dtype=ID_DTYPE)
        self._top = self.num_pages
        self._is_free = np.ones(self.num_pages, dtype=bool)
