"""Data checks run on each raw chunk block as it is read.

A check is ``check(array_name, block) -> (offset, message[, column]) | None``: the offset of
the first bad row within the block, what is wrong and, for 2-D blocks, the column. The stream
turns a failure into a :class:`~natgrad_stream.errors.DataError` naming the array, chunk,
global row and column.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from natgrad_stream._jit import jit

Check = Callable[[str, np.ndarray], "tuple[int, str] | None"]


#: Elements per block of the vectorized finiteness scan.
_FINITE_BLOCK = 4096


@jit
def first_nonfinite(flat):  # pragma: no cover - compiled
    """Index of the first NaN/±Inf in a 1-D float array, or -1 (releases the GIL).

    Each block is first reduced as ``Σ v·0`` (0 when all finite, NaN otherwise), a loop
    LLVM vectorizes; only a block that fails is scanned element by element.
    """
    n = flat.shape[0]
    for b0 in range(0, n, _FINITE_BLOCK):
        b1 = min(b0 + _FINITE_BLOCK, n)
        s = 0.0
        for i in range(b0, b1):
            s += flat[i] * 0.0
        if s != 0.0 or s != s:
            for i in range(b0, b1):
                v = flat[i]
                if not (v - v == 0.0):
                    return i
    return -1


def check_finite(name: str, block: np.ndarray):
    """Fail on the first NaN or infinite value (float arrays; integers are always finite)."""
    if block.dtype.kind != "f" or block.size == 0:
        return None
    flat = block.reshape(-1) if block.flags.c_contiguous else np.ravel(block)
    i = int(first_nonfinite(flat))
    if i < 0:
        return None
    if block.ndim == 2:
        row, col = divmod(i, block.shape[1])
        return row, f"non-finite value {block[row, col]!r}", col
    return i, f"non-finite value {block[i]!r}"


def check_nonnegative(name: str, block: np.ndarray):
    """Fail on the first negative value (sample weights)."""
    bad = np.flatnonzero(block < 0)
    if bad.size:
        return int(bad[0]), f"negative sample weight {block[bad[0]]!r}"
    return None


def check_x_dtype(name: str, dtype) -> np.dtype:
    """Features must be float32 or float64 (read without conversion)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"array {name!r} has dtype {dtype}; expected float32 or float64")
    return dtype


def check_target_dtype(name: str, dtype) -> np.dtype:
    """Targets and weights must be real numbers (bool, integer or float)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(f"array {name!r} has dtype {dtype}; expected a real numeric dtype")
    return dtype
