"""A 64-bit content hash of a chunk's bytes (releases the GIL).

Four independent multiply-rotate lanes over 64-bit words, as in xxHash64, so the loop
runs about as fast as memory delivers the words (``zlib.crc32`` is 3× slower); it
detects changed data, it is no defence against a deliberate collision. The features'
finiteness scan can fold the hash in (:func:`first_nonfinite_hashed`), so a chunk is read
from memory once for both.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import jit
from natgrad_stream.data.validation import _FINITE_BLOCK

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)


@jit
def _rotl(x, r):  # pragma: no cover - compiled
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@jit
def _round(acc, word):  # pragma: no cover - compiled
    return _rotl(acc + word * _P2, 31) * _P1


@jit
def hash_start():  # pragma: no cover - compiled
    """The lanes' initial state, shape (4,) uint64."""
    lanes = np.empty(4, dtype=np.uint64)
    lanes[0] = _P1 + _P2
    lanes[1] = _P2
    lanes[2] = np.uint64(0)
    lanes[3] = np.uint64(0) - _P1
    return lanes


@jit
def hash_update(lanes, words, lo, hi):  # pragma: no cover - compiled
    """Fold ``words[lo:hi]`` (``hi − lo`` a multiple of 4) into ``lanes``."""
    a0, a1, a2, a3 = lanes[0], lanes[1], lanes[2], lanes[3]
    for i in range(lo, hi, 4):
        a0 = _round(a0, words[i])
        a1 = _round(a1, words[i + 1])
        a2 = _round(a2, words[i + 2])
        a3 = _round(a3, words[i + 3])
    lanes[0], lanes[1], lanes[2], lanes[3] = a0, a1, a2, a3


@jit
def hash_finish(lanes, words, lo, tail, nbytes):  # pragma: no cover - compiled
    """The hash of ``nbytes`` bytes: ``lanes`` after the first ``lo`` words, the words
    from ``lo`` on (fewer than 4) and the ``tail`` bytes (fewer than 8).
    """
    h = _rotl(lanes[0], 1) + _rotl(lanes[1], 7) + _rotl(lanes[2], 12) + _rotl(lanes[3], 18)
    for i in range(lo, words.shape[0]):
        h = _rotl(h ^ _round(np.uint64(0), words[i]), 27) * _P1 + _P3
    for j in range(tail.shape[0]):
        h = _rotl(h ^ (np.uint64(tail[j]) * _P3), 11) * _P1
    h ^= np.uint64(nbytes)
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@jit
def hash_words(words, tail, nbytes):  # pragma: no cover - compiled
    """Hash of ``nbytes`` bytes given as 64-bit ``words`` (uint64, 1-D) and the remaining
    ``tail`` bytes (uint8, fewer than 8).
    """
    lanes = hash_start()
    full = words.shape[0] - words.shape[0] % 4
    hash_update(lanes, words, 0, full)
    return hash_finish(lanes, words, full, tail, nbytes)


@jit
def first_nonfinite_hashed(flat, words, zero, lanes):  # pragma: no cover - compiled
    """:func:`~natgrad_stream.data.validation.first_nonfinite` of ``flat`` (1-D float32
    or float64) that also folds ``words`` (the same bytes as uint64) into ``lanes`` block
    by block while the block is in cache; returns ``(first non-finite index or −1, words
    folded)``: :func:`hash_finish` completes the hash.
    """
    n = flat.shape[0]
    per_word = 8 // flat.itemsize  # elements per 64-bit word
    n_words = words.shape[0] - words.shape[0] % 4
    done = 0
    for b0 in range(0, n, _FINITE_BLOCK):
        b1 = min(b0 + _FINITE_BLOCK, n)
        s = zero
        for i in range(b0, b1):
            s += flat[i] * zero
        if s != zero or s != s:
            for i in range(b0, b1):
                v = flat[i]
                if not (v - v == zero):
                    return i, done
        upto = min(b1 // per_word - (b1 // per_word) % 4, n_words)
        hash_update(lanes, words, done, upto)
        done = upto
    return -1, done
