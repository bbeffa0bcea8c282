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
def first_nonfinite(flat, zero):  # pragma: no cover - compiled
    """Index of the first NaN/±Inf in a 1-D float array, or -1 (releases the GIL).

    Each block is first reduced as ``Σ v·0`` in the array's own dtype (``zero``), which is
    0 when all values are finite and NaN otherwise, a loop LLVM vectorizes at memory
    speed; only a failing block is scanned element by element. (``Σ (v − v)`` would be
    wrong here: reassociation lets LLVM cancel it to 0.)
    """
    n = flat.shape[0]
    for b0 in range(0, n, _FINITE_BLOCK):
        b1 = min(b0 + _FINITE_BLOCK, n)
        s = zero
        for i in range(b0, b1):
            s += flat[i] * zero
        if s != zero or s != s:
            for i in range(b0, b1):
                v = flat[i]
                if not (v - v == zero):
                    return i
    return -1


def check_finite(name: str, block: np.ndarray):
    """Fail on the first NaN or infinite value (float arrays; integers are always finite)."""
    if block.dtype.kind != "f" or block.size == 0:
        return None
    if block.dtype.itemsize < 4:  # float16: scanned as float32 (the compiled scan's types)
        block = block.astype(np.float32)
    flat = block.reshape(-1) if block.flags.c_contiguous else np.ravel(block)
    i = int(first_nonfinite(flat, flat.dtype.type(0)))
    if i < 0:
        return None
    if block.ndim == 2:
        row, col = divmod(i, block.shape[1])
        return row, f"non-finite value {block[row, col].item()!r}", col
    return i, f"non-finite value {block[i].item()!r}"


def check_nonnegative(name: str, block: np.ndarray):
    """Fail on the first negative value (sample weights)."""
    bad = np.flatnonzero(block < 0)
    if bad.size:
        return int(bad[0]), f"negative sample weight {block[bad[0]].item()!r}"
    return None


#: Feature dtypes converted to float32 in the read buffer (16 bits or fewer).
_TO_FLOAT32 = frozenset(np.dtype(t) for t in ("bool", "int8", "int16", "uint8", "uint16",
                                              "float16", "float32"))
#: Feature dtypes converted to float64 (wider integers; float64 itself).
_TO_FLOAT64 = frozenset(np.dtype(t) for t in ("int32", "int64", "uint32", "uint64",
                                              "float64"))


def compute_dtype(dtype) -> np.dtype | None:
    """The float dtype features of ``dtype`` are computed in (None when not accepted):
    float32 for types of 16 bits or fewer (bool, int8/16, uint8/16, float16, float32),
    float64 for wider integers and float64.
    """
    dtype = np.dtype(dtype)
    if dtype.byteorder not in "=|":  # a non-native float32 is still a float32
        dtype = dtype.newbyteorder("=")
    if dtype in _TO_FLOAT32:
        return np.dtype(np.float32)
    if dtype in _TO_FLOAT64:
        return np.dtype(np.float64)
    return None


def check_x_dtype(name: str, dtype) -> np.dtype:
    """The compute dtype of features stored as ``dtype`` (see :func:`compute_dtype`); the
    read buffer holds it and stored values are converted once, as they are read.
    """
    out = compute_dtype(dtype)
    if out is None:
        raise TypeError(f"array {name!r} has dtype {np.dtype(dtype)}; expected float32 or "
                        "float64, or bool, (u)int8/16/32/64 or float16 (converted)")
    return out


def check_target_dtype(name: str, dtype) -> np.dtype:
    """Targets and weights must be real numbers (bool, integer or float)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise TypeError(f"array {name!r} has dtype {dtype}; expected a real numeric dtype")
    return dtype
