"""Row gather for the within-read shuffle (releases the GIL)."""

from __future__ import annotations

from natgrad_stream._jit import jit


@jit
def gather_rows(src, index, dst):  # pragma: no cover - compiled
    """``dst[i, :] = src[index[i], :]`` for 2-D C-contiguous ``src`` and ``dst``.

    Explicit loops: slice assignment per row built array views and cost more than the
    learner's whole fused kernel.
    """
    d = src.shape[1]
    for i in range(index.shape[0]):
        r = index[i]
        for j in range(d):
            dst[i, j] = src[r, j]
