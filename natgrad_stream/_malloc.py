"""The command's allocator setting: freed buffers are kept for reuse, not returned at once.

glibc serves an allocation above its mmap threshold (128 KiB, raised to the size of larger
freed blocks) with fresh pages from the kernel, and gives memory at the top of its heap
back to the kernel as soon as more than twice that is free there. A streaming step of a
wide model allocates and frees a few arrays of P floats every batch (800 KB at P = 10⁵),
and each read decodes into fresh chunk buffers: every such buffer came back as new pages,
zero-filled on first touch. On 10⁵ features × 50 non-zeros that was about an eighth of a
one-pass fit's CPU. The command raises the mmap threshold to ``MMAP_THRESHOLD_BYTES`` and
keeps up to ``TRIM_THRESHOLD_BYTES`` free at the heap's top, so such buffers are reused;
peak memory is unchanged in kind (what is kept was in use before), and it stays
independent of the rows read.

Only the ``natgrad-stream`` command does this (a library does not change its host
process's allocator), and only under glibc (elsewhere nothing changes).
"""

from __future__ import annotations

import ctypes

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Allocations up to this size come from the heap (reused once freed).
MMAP_THRESHOLD_BYTES = 16 << 20
#: Free memory at the heap's top kept for reuse.
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_buffers() -> bool:
    """Set the thresholds in this process (glibc only); whether they were set."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
