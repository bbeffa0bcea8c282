"""Categorical table columns as sparse rows: one-hot or hashed, encoded chunk by chunk.

The feature spec ``x`` of a table may end in an encoding:

``"f*,city;onehot"``
    String and dictionary columns are one-hot: a column ``c`` with the values ``v₁ < v₂ <
    …`` (its distinct values over the whole table, found by one pass over that column when
    the source is opened) becomes the features ``c=v₁``, ``c=v₂``, …; numeric columns stay
    features of their own, in spec order.
``"f*,city;hash=B"``
    Every column is hashed into ``2**B`` features, as
    :func:`~natgrad_stream.data.hashing.hash_columns` maps a DataFrame's: a numeric column
    ``c`` is the feature ``h("c")`` with its value, a categorical one sets ``h("c=v")`` to
    1 (scikit-learn's ``FeatureHasher`` keys), so a model applies to another table without
    a stored vocabulary.

Every row holds one entry per selected column (a numeric zero and a missing category are
entries of value 0, which add nothing), so ``indptr`` is ``k × row`` and the rows ``a:b``
of the CSR matrix are the encoding of the table's rows ``a:b``: the
:class:`~natgrad_stream.data.sparse_source.SparseSource` over them streams, shuffles,
checks, digests and resumes as over a CSR group on Zarr, reading the table's pieces as it
goes. A category absent from the vocabulary (the table changed) and a missing numeric
value are refused at their row.
"""

from __future__ import annotations

import threading

import numpy as np

from natgrad_stream.data.hashing import MAX_HASH_BITS, feature_index
from natgrad_stream.errors import DataError


def split_encoding(x: str | None) -> tuple[str | None, str | None, int | None]:
    """``(columns, mode, bits)`` of a feature spec: mode None, ``"onehot"`` or ``"hash"``."""
    if x is None or ";" not in str(x):
        return x, None, None
    cols, _, enc = str(x).rpartition(";")
    enc = enc.strip().lower()
    if enc == "onehot":
        return cols, "onehot", None
    if enc.startswith("hash="):
        text = enc[5:]
        if not text.isdigit() or not 1 <= int(text) <= MAX_HASH_BITS:
            raise DataError(f"hash bits must be an integer in 1..{MAX_HASH_BITS}, got {text!r}",
                            array=str(x))
        return cols, "hash", int(text)
    raise DataError(f"unknown encoding {enc!r}: end the feature spec in ';onehot' or "
                    "';hash=B'", array=str(x))


def encoded_x(x: str | None, *, one_hot: bool = False, hash_bits: int | None = None):
    """The feature spec ``x`` with the encoding of ``one_hot`` or ``hash_bits`` appended
    (``fit --one-hot``, ``--hash-bits B``); ``x`` itself without them.
    """
    if not one_hot and hash_bits is None:
        return x
    x = "X" if x is None else str(x)
    if one_hot and hash_bits is not None:
        raise ValueError("--one-hot and --hash-bits exclude each other: one-hot the "
                         "categories, or hash every column")
    if ";" in x:
        raise ValueError(f"--x {x!r} names its encoding already; leave out --one-hot and "
                         "--hash-bits")
    return f"{x};onehot" if one_hot else f"{x};hash={int(hash_bits)}"


def is_categorical(field) -> bool:
    """Whether an Arrow field is a categorical column (string or dictionary)."""
    import pyarrow as pa

    t = field.type
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_dictionary(t))


def _as_values(col):
    """A categorical column's values as one plain (string) array."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


class EncodedColumns:
    """The sparse encoding of a table's columns (see the module docstring).

    Attributes
    ----------
    n_features : int
    feature_names : list of str
    per_row : int
        Entries of each row (one per column).
    """

    def __init__(self, pieces, columns: list[str], mode: str, bits: int | None):
        import pyarrow as pa

        from natgrad_stream.data.tables import _numpy_dtype

        self._pieces, self.columns, self.mode = pieces, list(columns), mode
        schema = pieces.schema
        self.kinds = []
        for c in self.columns:
            field = schema.field(c)
            if is_categorical(field):
                self.kinds.append("cat")
            else:
                _numpy_dtype(field, pieces.label)  # refuses other types
                self.kinds.append("num")
        self.per_row = len(self.columns)
        self._vocab: dict[str, pa.Array] = {}
        if mode == "hash":
            self.n_features = 1 << int(bits)
            self.bits = int(bits)
            self.feature_names = None
            self._hashes: dict[str, dict] = {c: {} for c in self.columns}
            self._offsets = []
            return
        names, offset, self._offsets = [], 0, []
        for c, kind in zip(self.columns, self.kinds, strict=True):
            self._offsets.append(offset)
            if kind == "num":
                names.append(c)
                offset += 1
                continue
            all_levels = self._levels(c)
            self._vocab[c] = all_levels
            names += [f"{c}={v}" for v in all_levels.to_pylist()]
            offset += max(1, len(all_levels))
        self.n_features = offset
        self.feature_names = names
        self.bits = None

    def _levels(self, c):
        """The sorted distinct values of column ``c`` over every piece (one pass)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        seen = [pc.unique(_as_values(self._pieces.read(i, [c]).column(c))).drop_null()
                for i in range(len(self._pieces.pieces))]
        levels = pc.unique(pa.concat_arrays(seen))
        return levels.take(pc.array_sort_indices(levels))

    def encode(self, table, row0: int, where: str) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int32, data float64)`` of a piece's rows, ``per_row`` entries a row."""
        import pyarrow.compute as pc

        n, k = table.num_rows, self.per_row
        idx = np.zeros((n, k), dtype=np.int32)
        val = np.zeros((n, k), dtype=np.float64)
        for j, (c, kind) in enumerate(zip(self.columns, self.kinds, strict=True)):
            col = table.column(c)
            if kind == "num":
                if col.null_count:
                    first = int(pc.index(pc.is_null(col), True).as_py())
                    raise DataError(f"missing value (null) in column {c!r} ({where})",
                                    array=c, row=row0 + first)
                val[:, j] = col.to_numpy()
                idx[:, j] = feature_index(c, self.bits) if self.mode == "hash" \
                    else self._offsets[j]
                continue
            values = _as_values(col)
            if self.mode == "hash":
                enc = pc.dictionary_encode(values)
                cache = self._hashes[c]
                words = enc.dictionary.to_pylist()
                table_of = np.array([cache.setdefault(v, feature_index(f"{c}={v}", self.bits))
                                     for v in words], dtype=np.int32)
                codes = enc.indices
                present = ~np.asarray(codes.is_null().to_numpy(zero_copy_only=False))
                code = codes.fill_null(0).to_numpy()
                if table_of.size:
                    idx[:, j] = np.where(present, table_of[code], 0)
                val[:, j] = present
                continue
            code = pc.index_in(values, value_set=self._vocab[c])
            missing = np.asarray(values.is_null().to_numpy(zero_copy_only=False))
            unknown = np.asarray(code.is_null().to_numpy(zero_copy_only=False)) & ~missing
            if unknown.any():
                r = int(np.flatnonzero(unknown)[0])
                raise DataError(f"value {values[r].as_py()!r} of column {c!r} is not among "
                                f"the {len(self._vocab[c])} values found when the table was "
                                f"opened ({where}): the table changed", array=c, row=row0 + r)
            idx[:, j] = self._offsets[j] + code.fill_null(0).to_numpy()
            val[:, j] = ~missing
        return idx.reshape(-1), val.reshape(-1)


class _EntryArray:
    """``data`` or ``indices`` of the encoded CSR matrix as a 1-D array-like: entries
    ``[p:q]`` (multiples of ``per_row``) encode rows ``p/k : q/k`` of the table.
    """

    def __init__(self, rows, which: int, n_rows: int):
        self._rows, self._which = rows, which
        self.shape = (n_rows * rows.per_row,)
        self.dtype = np.dtype(np.float64 if which else np.int32)
        self.ndim = 1

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("encoded entries are read by slices")
        p, q, _ = key.indices(self.shape[0])
        return self._rows.entries(p, max(p, q))[self._which]


class _Indptr:
    """``indptr = k × row`` as an array-like (slices and integer arrays)."""

    def __init__(self, n_rows: int, k: int):
        self.shape, self.dtype, self.ndim, self._k = (n_rows + 1,), np.dtype(np.int64), 1, k

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, _ = key.indices(self.shape[0])
            return np.arange(a, max(a, b), dtype=np.int64) * self._k
        return np.asarray(key, dtype=np.int64) * self._k


class EncodedRows:
    """Rows of the encoding read from the table's pieces (the last piece kept)."""

    def __init__(self, encoded: EncodedColumns):
        self.enc = encoded
        self.per_row = encoded.per_row
        self._cache = None
        self._lock = threading.Lock()

    def entries(self, p: int, q: int):
        k = self.per_row
        a, b = p // k, q // k
        if p % k or q % k:
            raise ValueError(f"entries {p}:{q} do not start and end at rows")
        pieces = self.enc._pieces
        idx = np.empty((b - a) * k, dtype=np.int32)
        val = np.empty((b - a) * k, dtype=np.float64)
        starts = pieces.starts
        i = int(np.searchsorted(starts, a, side="right")) - 1
        pos, row = 0, a
        while row < b:
            s0, s1 = int(starts[i]), int(starts[i + 1])
            lo, hi = row - s0, min(b, s1) - s0
            pi, pv = self._piece(i)
            idx[pos:pos + (hi - lo) * k] = pi[lo * k:hi * k]
            val[pos:pos + (hi - lo) * k] = pv[lo * k:hi * k]
            pos += (hi - lo) * k
            row = s0 + hi
            i += 1
        return idx, val

    def _piece(self, i: int):
        with self._lock:
            if self._cache is not None and self._cache[0] == i:
                return self._cache[1]
        pieces = self.enc._pieces
        out = self.enc.encode(pieces.read(i, self.enc.columns), int(pieces.starts[i]),
                              pieces.pieces[i].where)
        with self._lock:
            self._cache = (i, out)
        return out


def encoded_csr(pieces, columns: list[str], mode: str, bits: int | None, name: str):
    """``(CSRArrays, EncodedColumns)`` of the table's ``columns`` encoded as ``mode``."""
    from natgrad_stream.data.csr_store import CSRArrays

    enc = EncodedColumns(pieces, columns, mode, bits)
    rows = EncodedRows(enc)
    n = pieces.n_rows
    csr = CSRArrays(_EntryArray(rows, 1, n), _EntryArray(rows, 0, n),
                    _Indptr(n, enc.per_row), (n, enc.n_features), name)
    return csr, enc
