"""Row gather for the within-read shuffle (runs in the reader thread, releases the GIL)."""

from __future__ import annotations

from natgrad_stream._jit import jit


@jit
def gather_rows(src, index, dst):  # pragma: no cover - compiled
    """``dst[i] = src[index[i]]`` for 2-D ``src``/``dst`` (rows) or 1-D arrays."""
    for i in range(index.shape[0]):
        dst[i] = src[index[i]]
