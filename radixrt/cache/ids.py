"""Token ids and page ids as 1-D int32 numpy arrays: half the memory traffic of int64, and what
the attention kernels' page tables take."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ID_DTYPE = np.dtype(np.int32)
_INT32 = np.iinfo(np.int32)

IdArray = np.ndarray  # 1-D int32


def as_ids(values: Sequence[int] | np.ndarray, what: str) -> IdArray:
    """``values`` as a 1-D int32 array (zero-copy when it already is one); ``what`` names them in
    errors. Accepts lists, numpy arrays and CPU tensors; rejects non-integers and values that do
    not fit in int32 rather than wrapping them."""
    if type(values) is np.ndarray and values.dtype == ID_DTYPE and values.ndim == 1:
        return values  # the hot path: no conversion, no check
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype == ID_DTYPE or arr.size == 0:
        return arr.astype(ID_DTYPE, copy=False)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < _INT32.min or hi > _INT32.max:
        raise ValueError(f"{what} must fit in int32, got {lo if lo < _INT32.min else hi}")
    return arr.astype(ID_DTYPE)
