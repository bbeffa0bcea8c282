"""Feature hashing of a table's columns into sparse rows (the hashing trick).

Each column becomes one or more of ``2**bits`` feature columns:

- a numeric column ``c`` (bool, integer, float) is the feature ``h("c")`` with its value;
- a string, object or categorical column ``c`` is one-hot: the row's value ``v`` sets
  the feature ``h("c=v")`` to 1; a missing value (None, NaN) sets none.

``h`` is the 32-bit MurmurHash3 (x86, seed 0) of the UTF-8 key, its absolute value as a
signed integer taken modulo ``2**bits``, as scikit-learn's ``FeatureHasher``
(``alternate_sign=False``) maps its keys ``"c=v"`` and ``"c"``: a pure function of the
column name and value, so a model fitted on one file applies to another without a stored
vocabulary. Distinct keys that hash alike share a column (collisions; with ``bits`` well
above log2 of the distinct keys they are rare). Each distinct value is hashed once per
column, so the cost is one pass over the codes plus the distinct values.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream.errors import DataError

#: ``bits`` accepted: 1 … 31 (int32 column indices).
MAX_HASH_BITS = 31


def murmurhash3_32(key: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of ``key`` as an unsigned int (the reference algorithm)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    n = len(key)
    body = n - n % 4
    for i in range(0, body, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = 0
    tail = key[body:]
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def feature_index(key: str, bits: int) -> int:
    """The hashed column of ``key`` among ``2**bits``: ``|h| mod 2**bits`` of the signed
    32-bit hash, scikit-learn's ``FeatureHasher`` mapping (so its columns are ours).
    """
    h = murmurhash3_32(key.encode("utf-8"))
    if h >= 1 << 31:
        h -= 1 << 32
    n = 1 << bits
    if h == -(1 << 31):  # |h| does not fit: FeatureHasher's special case
        return (2147483647 - (n - 1)) % n
    return abs(h) % n


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or \
            not 1 <= int(bits) <= MAX_HASH_BITS:
        raise ValueError(f"hash bits must be an integer in 1..{MAX_HASH_BITS}, got {bits!r}")
    return int(bits)


def _is_numeric(series) -> bool:
    import pandas as pd

    dtype = series.dtype
    return (not isinstance(dtype, pd.CategoricalDtype)
            and (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)))


def hash_columns(table, bits: int, *, columns=None):
    """Hash a pandas DataFrame's columns into a CSR matrix of ``2**bits`` columns.

    Parameters
    ----------
    table : pandas.DataFrame
    bits : int
        1 … 31; the output has ``2**bits`` columns.
    columns : sequence of str, optional
        The columns to hash (default: all).

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_rows, 2**bits), float64
        Duplicates (two keys of a row in one column) are summed.

    Raises
    ------
    DataError
        A numeric column holding a NaN or an infinite value (named with its row).
    """
    import pandas as pd
    import scipy.sparse as sp

    bits = _check_bits(bits)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"hash_columns takes a pandas DataFrame, got {type(table).__name__}")
    names = list(table.columns) if columns is None else list(columns)
    n = len(table)
    rows, cols, vals = [], [], []
    for name in names:
        if name not in table.columns:
            raise DataError(f"is not a column of the table (columns: {list(table.columns)})",
                            array=str(name))
        series = table[name]
        label = str(name)
        if _is_numeric(series):
            v = series.to_numpy(dtype=np.float64, na_value=np.nan)
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise DataError(f"non-finite value {v[bad[0]]!r} in a numeric column (hash "
                                "it as a category by casting the column to str, or fill it)",
                                array=label, row=int(bad[0]))
            keep = np.flatnonzero(v != 0.0)
            rows.append(keep)
            cols.append(np.full(keep.shape[0], feature_index(label, bits), dtype=np.int64))
            vals.append(v[keep])
            continue
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        table_of = np.array([feature_index(f"{label}={u}", bits) for u in uniques],
                            dtype=np.int64)
        keep = np.flatnonzero(codes >= 0)
        rows.append(keep)
        cols.append(table_of[codes[keep]])
        vals.append(np.ones(keep.shape[0]))
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0)
    out = sp.coo_matrix((v, (r, c)), shape=(n, 1 << bits)).tocsr()
    out.sum_duplicates()
    return out


def is_hashable_table(data) -> bool:
    """Whether ``data`` is a pandas DataFrame with a non-numeric column (one that needs
    hashing or encoding before it can be read as features).
    """
    import sys

    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(data, pd.DataFrame):
        return False
    return any(not _is_numeric(data[c]) for c in data.columns)
