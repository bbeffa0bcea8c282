"""Tables as sources: Parquet (a file, a directory, hive partitions, a ``pyarrow.dataset``),
Arrow tables, CSV (through pyarrow), ``.npy`` files (memory-mapped) and HuggingFace
``datasets.Dataset``, streamed as an :class:`~natgrad_stream.data.stream.ArraySource`.

A table is cut into *pieces*: a Parquet dataset's row groups (files in sorted path
order, then row groups in file order), or blocks of ``chunk_rows`` rows of an in-memory
table (an Arrow table, a CSV read by pyarrow, a HuggingFace dataset's memory-mapped
table) or of a ``.npy`` file. The selected columns of X, y and w are array-likes
(:class:`TableColumns`) that read rows ``a:b`` from the pieces they overlap, so the
source's chunks of ``chunk_rows`` rows are read, shuffled, checked, digested and resumed
exactly as a Zarr array's: the same plans (chunk order keyed by ``(seed, epoch)``), the
same cursors, the same content digests. When every row group but the last holds the same
number of rows, ``chunk_rows`` is that number and each chunk is one row group; otherwise
it is the largest group's rows, and a chunk reads the groups it overlaps.

Columns are chosen by name: ``x`` is a comma-separated list of names or globs (``"f*"``,
``"a,b,c*"``; a glob skips the ``y`` and ``w`` columns), by default every column but ``y``
and ``w`` (a column named ``X``, if there is one). Features must be numeric (bool,
integers, floats); a missing value (null) is refused at its row. A file that changes
while it is read (size or modification time) is refused before its rows are used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natgrad_stream.data.budget import default_chunk_rows
from natgrad_stream.data.table_encoding import encoded_csr, split_encoding
from natgrad_stream.errors import DataError

#: File suffixes read as tables (a directory holding ``.parquet`` files is one too).
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv")
NPY_SUFFIXES = (".npy",)
TABLE_SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES + NPY_SUFFIXES
#: Bytes of a file's head and tail digested for its identity (Parquet: the whole footer).
_EDGE_BYTES = 1 << 16


def is_table_path(data) -> bool:
    """Whether ``data`` is a path read as a table: a file with a table suffix, or a
    directory holding Parquet files (and no ``zarr.json``).
    """
    if not isinstance(data, str | os.PathLike):
        return False
    path = Path(os.fspath(data))
    if "://" in os.fspath(data):
        return False
    if path.suffix.lower() in TABLE_SUFFIXES:
        return True
    if path.is_dir() and not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
        return any(p.suffix.lower() in PARQUET_SUFFIXES for p in path.rglob("*"))
    return False


# -- column selection --------------------------------------------------------------------
def select_columns(names, x: str | None, exclude=()) -> list[str]:
    """The feature columns ``x`` names among ``names``: a comma-separated list of column
    names and globs, in that order (a glob's matches in table order, without ``exclude``);
    None or ``"X"`` without a column ``X``: every column but ``exclude``.

    Raises
    ------
    DataError
        A name or glob that matches no column (the message lists the columns).
    """
    names = [str(n) for n in names]
    exclude = {e for e in exclude if e is not None}
    if x is None or (x == "X" and "X" not in names):
        cols = [n for n in names if n not in exclude]
        if not cols:
            raise DataError(f"no feature columns: the table has only {names}", array="x")
        return cols
    out: list[str] = []
    for item in (s.strip() for s in str(x).split(",")):
        if not item:
            continue
        if any(ch in item for ch in "*?["):
            found = [n for n in names if fnmatch.fnmatchcase(n, item) and n not in exclude]
        else:
            found = [item] if item in names else []
        if not found:
            raise DataError(f"no column matches {item!r}; the table has columns "
                            f"{_listing(names)}", array=item)
        out += [n for n in found if n not in out]
    if not out:
        raise DataError(f"names no columns; the table has {_listing(names)}", array=str(x))
    return out


def _listing(names, k: int = 20) -> str:
    names = list(names)
    return str(names) if len(names) <= k else f"{names[:k]} and {len(names) - k} more"


def check_feature_names(found, fitted, *, array: str | None = None) -> None:
    """Refuse a table whose feature columns (``found``: a source's ``feature_names``) are
    not those a model was fitted on (``fitted``), names and order: a DataError naming the
    first that differ. Either None: nothing to compare.
    """
    if found is None or fitted is None:
        return
    found, fitted = [str(c) for c in found], [str(c) for c in fitted]
    if found == fitted:
        return
    extra = [c for c in found if c not in set(fitted)]
    missing = [c for c in fitted if c not in set(found)]
    if extra or missing:
        hint = " (one-hot columns are the values found in the data; --hash-bits B encodes " \
            "any data alike)" if any("=" in c for c in extra + missing) else ""
        raise DataError(f"the feature columns are not those the model was fitted on: "
                        f"{_listing(extra, 5)} here, {_listing(missing, 5)} in the fit{hint}",
                        array=array)
    j = next(i for i, (a, b) in enumerate(zip(found, fitted, strict=False)) if a != b)
    raise DataError(f"the feature columns are those the model was fitted on in another order: "
                    f"column {j} is {found[j]!r} here, {fitted[j]!r} in the fit (name them in "
                    f"the fitted order with --x: {_listing(fitted, 5)})", array=array)


# -- pieces ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """One unit read at once: ``read(columns) -> pyarrow.Table`` of ``rows`` rows,
    ``where`` names it in messages, ``file`` is the file it reads (None in memory).
    """

    rows: int
    read: object
    where: str
    file: str | None = None


class TablePieces:
    """The pieces of a table, their row offsets, its schema and the files behind it (their
    size and modification time when opened, checked before every read).
    """

    def __init__(self, pieces: list[Piece], schema, label: str, *, uniform: bool = False):
        if not pieces or sum(p.rows for p in pieces) == 0:
            raise DataError(f"{label} holds no rows")
        self.pieces = pieces
        self.schema = schema
        self.label = label
        self.starts = np.concatenate([[0], np.cumsum([p.rows for p in pieces])]).astype(
            np.int64)
        self.n_rows = int(self.starts[-1])
        self.files = sorted({p.file for p in pieces if p.file is not None})
        self._stat = {f: _stat(f) for f in self.files}
        rows = [p.rows for p in pieces]
        #: Rows per chunk: the row groups' common size (all but the last), else the largest
        #: (``uniform``: blocks cut to one size already).
        self.aligned = uniform or len(set(rows[:-1])) <= 1 and rows[-1] <= rows[0]
        self.chunk_rows = max(1, rows[0] if self.aligned else max(rows))

    def check_unchanged(self, file: str) -> None:
        """Refuse a file whose size or modification time changed since it was opened."""
        then, now = self._stat[file], _stat(file)
        if then != now:
            what = f"{then[0]:,} bytes then, {now[0]:,} now" if then[0] != now[0] else \
                "same size, modified since"
            raise DataError(f"{file} changed while it was read ({what}): a table must not "
                            "change under a run", array=self.label)

    def read(self, i: int, columns: list[str]):
        """Piece ``i``'s ``columns`` as a pyarrow Table (errors name the piece)."""
        piece = self.pieces[i]
        if piece.file is not None:
            self.check_unchanged(piece.file)
        try:
            table = piece.read(columns)
        except DataError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 (pyarrow's errors: damaged files, ...)
            raise DataError(f"{piece.where} could not be read ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})",
                            array=self.label, row=int(self.starts[i])) from exc
        if table.num_rows != piece.rows:
            raise DataError(f"{piece.where} has {table.num_rows:,} rows, its metadata "
                            f"{piece.rows:,}: the file changed", array=self.label,
                            row=int(self.starts[i]))
        return table


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path} cannot be read any more ({exc.strerror})") from exc
    return int(st.st_size), int(st.st_mtime_ns)


def _numpy_dtype(field, label: str, *, target: bool = False) -> np.dtype:
    """The NumPy dtype of a numeric Arrow field; a DataError for any other type (``target``:
    the field is a target or weight column, which no encoding applies to).
    """
    import pyarrow as pa

    t = field.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype())
    if target:
        raise DataError(f"column {field.name!r} of {label} has type {t}: a target or weight "
                        "column must be numeric (bool, integer or float); store classes as "
                        "integer codes 0 … K−1", array=field.name)
    raise DataError(f"column {field.name!r} of {label} has type {t}: features, targets and "
                    "weights must be numeric (bool, integer or float); one-hot or hash "
                    "categorical columns (--one-hot, --hash-bits B; in Python x='...;onehot' "
                    "or x='...;hash=B') or leave them out of --x", array=field.name)


class TableColumns:
    """Columns of a table as a read-only array-like: shape ``(n, d)`` (or ``(n,)`` for one
    target column), the columns' common NumPy dtype, and row slices ``[a:b]`` read from
    the pieces they overlap (the last piece read is kept, so consecutive chunks of one
    row group read it once).
    """

    ndim: int

    def __init__(self, pieces: TablePieces, columns: list[str], *, one_d: bool = False):
        self._pieces = pieces
        self.columns = list(columns)
        fields = [pieces.schema.field(c) for c in self.columns]
        dtypes = [_numpy_dtype(f, pieces.label, target=one_d) for f in fields]
        self.dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes[0]
        n = pieces.n_rows
        self.shape = (n,) if one_d else (n, len(self.columns))
        self.ndim = len(self.shape)
        self._cache: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("table columns are read by row slices [a:b]")
        a, b, _ = key.indices(self.shape[0])
        return self.read(a, max(a, b))

    def __array__(self, dtype=None, copy=None):
        out = self.read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` as an array of :attr:`dtype` (a piece read whole is the decoded
        piece itself: callers copy, never write).
        """
        starts = self._pieces.starts
        i = int(np.searchsorted(starts, a, side="right")) - 1
        if a == starts[i] and b == starts[i + 1]:
            return self._block(i)
        out = np.empty((b - a,) + self.shape[1:], dtype=self.dtype)
        pos, row = 0, a
        while row < b:
            s0, s1 = int(starts[i]), int(starts[i + 1])
            lo, hi = row - s0, min(b, s1) - s0
            out[pos:pos + hi - lo] = self._block(i)[lo:hi]
            pos += hi - lo
            row = s0 + hi
            i += 1
        return out

    def _block(self, i: int) -> np.ndarray:
        with self._lock:
            if self._cache is not None and self._cache[0] == i:
                return self._cache[1]
        table = self._pieces.read(i, self.columns)
        block = columns_to_numpy(table, self.columns, self.dtype, one_d=self.ndim == 1,
                                 row0=int(self._pieces.starts[i]),
                                 where=self._pieces.pieces[i].where)
        with self._lock:
            self._cache = (i, block)
        return block


def columns_to_numpy(table, columns, dtype, *, one_d=False, row0=0, where=""):
    """``columns`` of an Arrow table or record batch as a NumPy array of ``dtype``, shape
    ``(rows,)`` (``one_d``) or ``(rows, len(columns))``; a null is a DataError at its row
    (``row0`` + its index).
    """
    # filled column by column in Fortran order (contiguous writes), returned C-ordered
    block = np.empty((table.num_rows,) if one_d else (len(columns), table.num_rows),
                     dtype=dtype)
    for j, name in enumerate(columns):
        col = table.column(name)
        if col.null_count:
            import pyarrow.compute as pc

            first = int(pc.index(pc.is_null(col), True).as_py())
            raise DataError(f"missing value (null) in column {name!r}"
                            + (f" ({where})" if where else ""), array=name, row=row0 + first)
        values = col.to_numpy()
        if one_d:
            block[:] = values
        else:
            block[j] = values
    return block if one_d else np.ascontiguousarray(block.T)


def arrow_items(data, x: str | None = "X", y: str | None = "y", w: str | None = None,
                label: str = "Arrow stream"):
    """``(X, y, w)`` NumPy items of a ``pyarrow.RecordBatchReader`` (or any iterable of
    record batches or tables), one per record batch, columns chosen as for a table.
    """
    cols = dtype = roles = None
    row0 = 0
    for k, batch in enumerate(data):
        if cols is None:
            names = list(batch.schema.names)
            for name in (y, w):
                if name is not None and name not in names:
                    raise DataError(f"no such column in the {label}; it has columns "
                                    f"{_listing(names)}", array=name)
            cols = select_columns(names, x, exclude=(y, w))
            dtype = np.result_type(*[_numpy_dtype(batch.schema.field(c), label)
                                     for c in cols])
            roles = [None if name is None else
                     (name, _numpy_dtype(batch.schema.field(name), label, target=True))
                     for name in (y, w)]
        where = f"{label} batch {k}"
        X = columns_to_numpy(batch, cols, dtype, row0=row0, where=where)
        yw = [None if r is None else
              columns_to_numpy(batch, [r[0]], r[1], one_d=True, row0=row0, where=where)
              for r in roles]
        row0 += batch.num_rows
        yield (X, *yw)


def reiterable_items(factory, x: str | None = "X", y: str | None = "y",
                     w: str | None = None):
    """One epoch of a re-iterable source: ``factory()``, read as :func:`arrow_items` when
    it returns Arrow record batches (a ``RecordBatchReader`` or a ``Table``), else as it
    is (items ``X``, ``(X, y)`` or ``(X, y, w)``).
    """
    items = factory()
    if _is_type(items, "pyarrow", "RecordBatchReader"):
        return arrow_items(items, x, y, w)
    if _is_type(items, "pyarrow", "Table"):
        return arrow_items(items.to_batches(), x, y, w, label="Arrow table")
    return items


# -- openers -----------------------------------------------------------------------------
def parquet_pieces(data, label: str | None = None) -> TablePieces:
    """The row groups of a Parquet file, directory (hive partitions read as columns) or
    ``pyarrow.dataset.Dataset``, files in sorted path order.
    """
    import pyarrow.dataset as pads

    if isinstance(data, pads.Dataset):
        dataset, label = data, label or "dataset"
    else:
        path = os.fspath(data)
        label = label or path
        if not os.path.exists(path):
            raise DataError(f"no such file or directory: {path}")
        try:
            dataset = pads.dataset(path, format="parquet", partitioning="hive",
                                   exclude_invalid_files=False)
        except Exception as exc:  # noqa: BLE001 (pyarrow: not Parquet, damaged footer, ...)
            raise DataError(f"{path} is not a readable Parquet file or directory "
                            f"({type(exc).__name__}: {_first_line(exc)})") from exc
    schema = dataset.schema
    fragments = sorted(dataset.get_fragments(), key=lambda f: getattr(f, "path", ""))
    pieces: list[Piece] = []
    for frag in fragments:
        file = getattr(frag, "path", None)
        try:
            groups = frag.split_by_row_group() if hasattr(frag, "split_by_row_group") \
                else [frag]
            for g, part in enumerate(groups):
                rows = int(part.row_groups[0].num_rows) if hasattr(part, "row_groups") \
                    and part.row_groups else int(part.count_rows())
                if rows == 0:
                    continue
                pieces.append(Piece(rows, _fragment_reader(part, schema),
                                    f"{file or label} row group {g}",
                                    file if file and os.path.isfile(file) else None))
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{file or label} is not a readable Parquet file "
                            f"({type(exc).__name__}: {_first_line(exc)})") from exc
    if not pieces:
        raise DataError(f"{label} holds no rows")
    return TablePieces(pieces, schema, label)


def _first_line(exc) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _fragment_reader(fragment, schema):
    def read(columns):
        return fragment.to_table(columns=columns, schema=schema, use_threads=True)
    return read


def table_pieces(table, label: str, chunk_rows: int, *, slicer=None) -> TablePieces:
    """Blocks of ``chunk_rows`` rows of an in-memory (or memory-mapped) Arrow table, or of
    an object whose ``slicer(a, b)`` returns rows ``a:b`` as one.
    """
    n = int(table.num_rows)
    if n == 0:
        raise DataError(f"{label} holds no rows")
    R = max(1, min(int(chunk_rows), n))

    def reader(a, k):
        def read(columns):
            part = table.slice(a, k) if slicer is None else slicer(a, a + k)
            return part.select(columns)
        return read

    pieces = [Piece(min(R, n - a), reader(a, min(R, n - a)), f"{label} rows {a}:{min(a + R, n)}")
              for a in range(0, n, R)]
    return TablePieces(pieces, table.schema, label, uniform=True)


def _in_memory_chunk_rows(schema, x_cols, label) -> int:
    row_bytes = sum(max(4, _numpy_dtype(schema.field(c), label).itemsize) for c in x_cols)
    return default_chunk_rows(max(1, row_bytes))


def read_csv(path):
    """A CSV file read by ``pyarrow.csv`` (whole, in memory, as Arrow columns)."""
    import pyarrow.csv as pacsv

    path = os.fspath(path)
    opts = pacsv.ParseOptions(delimiter="\t") if path.lower().endswith(".tsv") else None
    try:
        return pacsv.read_csv(path, parse_options=opts)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is not a readable CSV file ({type(exc).__name__}: "
                        f"{_first_line(exc)})") from exc


def _hf_table(ds):
    """``(table, slicer)`` of a HuggingFace dataset: its memory-mapped Arrow table, or,
    when it holds an indices mapping (after ``select``, ``shuffle``, ``filter``), slices
    through the mapping.
    """
    if getattr(ds, "_indices", None) is None:
        return ds.data.table, None
    arrow = ds.with_format("arrow")
    return ds.data.table, (lambda a, b: arrow[a:b])


def open_table(data, *, x: str | None = "X", y: str | None = "y", w: str | None = None,
               chunk_rows: int | None = None, exclude=()):
    """An :class:`~natgrad_stream.data.stream.ArraySource` over a table's columns.

    Parameters
    ----------
    data : path, pyarrow.Table, pyarrow.dataset.Dataset or datasets.Dataset
        A Parquet file or directory (hive partitions are columns), a CSV file (read whole
        by pyarrow), a ``.npy`` file (see :func:`open_npy`), or a table object.
    x : str or None
        Feature columns: names and globs, comma-separated (see :func:`select_columns`).
    y, w : str or None
        Target and sample-weight columns.
    chunk_rows : int, optional
        Rows per chunk: default the row groups' (Parquet), else blocks of at most
        ``DEFAULT_CHUNK_BYTES`` of features (in-memory tables).
    exclude : sequence of str
        Columns the default ``x`` (every column) leaves out besides ``y`` and ``w``, where
        the table has them (a fitted run's target and weights, to predict its table).

    Returns
    -------
    ArraySource
        With ``feature_names`` (the columns of X) and ``table_files`` (the files read).
    """
    from natgrad_stream.data.stream import ArraySource

    if isinstance(data, str | os.PathLike):
        _check_regular_files(data)  # a FIFO or device would hang the reader
    if isinstance(data, str | os.PathLike) and Path(data).suffix.lower() in NPY_SUFFIXES:
        return open_npy(data, x=x, y=y, w=w, chunk_rows=chunk_rows, exclude=exclude)
    pieces, slicer, table = None, None, None
    if isinstance(data, str | os.PathLike):
        label = os.fspath(data)
        if Path(label).suffix.lower() in CSV_SUFFIXES:
            if not os.path.isfile(label):
                raise DataError(f"no such file: {label}")
            table = read_csv(label)
            files = [label]
        else:
            pieces = parquet_pieces(data)
    elif _is_type(data, "datasets", "Dataset"):
        label = "HuggingFace dataset"
        table, slicer = _hf_table(data)
        files = []
    elif _is_type(data, "pyarrow", "Table"):
        label, table, files = "Arrow table", data, []
    else:  # a pyarrow.dataset.Dataset
        label = "Arrow dataset"
        pieces = parquet_pieces(data, label)
    schema = pieces.schema if pieces is not None else table.schema
    names = list(schema.names)
    x, mode, bits = split_encoding(x)
    for role, name in (("y", y), ("w", w)):
        if name is not None and name not in names:
            raise DataError(f"no such column in {label}; it has columns {_listing(names)} "
                            f"(name the {'targets' if role == 'y' else 'weights'} column "
                            f"with --{role})", array=name)
    x_cols = select_columns(names, x, exclude=(y, w, *exclude))
    if pieces is None:
        R = chunk_rows or (_in_memory_chunk_rows(schema, x_cols, label) if mode is None
                           else default_chunk_rows(12 * len(x_cols)))
        if slicer is not None:
            n = len(data)
            pieces = _sliced_pieces(schema, n, label, R, slicer)
        else:
            pieces = table_pieces(table, label, R)
        if isinstance(data, str | os.PathLike):
            pieces.files = files
            pieces._stat = {f: _stat(f) for f in files}
    Y = TableColumns(pieces, [y], one_d=True) if y is not None else None
    W = TableColumns(pieces, [w], one_d=True) if w is not None else None
    name = os.path.basename(label.rstrip("/")) or label
    names = (x if x is not None else "X", y or "y", w or "w")
    if mode is not None:  # categorical columns one-hot or hashed: sparse rows
        from natgrad_stream.data.sparse_source import SparseSource

        csr, enc = encoded_csr(pieces, x_cols, mode, bits, names[0])
        source = SparseSource(csr, Y, W, chunk_rows=chunk_rows or pieces.chunk_rows,
                              names=names, name=name)
        source.feature_names = enc.feature_names
    else:
        source = ArraySource(TableColumns(pieces, x_cols), Y, W,
                             chunk_rows=chunk_rows or pieces.chunk_rows, names=names,
                             name=name)
        source.feature_names = list(x_cols)
    source.table_files = list(pieces.files)
    return source


def _check_regular_files(path) -> None:
    """Refuse a FIFO, device or socket given as, or inside, a table path (before pyarrow
    or NumPy open it, which would block).
    """
    from natgrad_stream._files import check_regular

    path = os.fspath(path)
    if os.path.isdir(path):
        for top, _, files in os.walk(path):
            for name in files:
                check_regular(os.path.join(top, name))
    else:
        check_regular(path)


def _sliced_pieces(schema, n: int, label: str, R: int, slicer) -> TablePieces:
    R = max(1, min(int(R), n))

    def reader(a, b):
        return lambda columns: slicer(a, b).select(columns)

    pieces = [Piece(min(R, n - a), reader(a, min(a + R, n)), f"{label} rows {a}:{min(a + R, n)}")
              for a in range(0, n, R)]
    return TablePieces(pieces, schema, label, uniform=True)


def _is_type(data, module: str, name: str) -> bool:
    import sys

    mod = sys.modules.get(module)
    return mod is not None and isinstance(data, getattr(mod, name))


def is_record_batch_reader(data) -> bool:
    """Whether ``data`` is a ``pyarrow.RecordBatchReader`` (a one-pass stream)."""
    return _is_type(data, "pyarrow", "RecordBatchReader")


def is_table_object(data) -> bool:
    """Whether ``data`` is a table object :func:`open_table` reads: a ``pyarrow.Table``,
    a ``pyarrow.dataset.Dataset`` or a HuggingFace ``datasets.Dataset``.
    """
    return (_is_type(data, "pyarrow", "Table") or _is_type(data, "datasets", "Dataset")
            or _is_type(data, "pyarrow.dataset", "Dataset"))


# -- .npy ----------------------------------------------------------------------------------
class NpyColumns:
    """Columns of a memory-mapped ``.npy`` matrix as an array-like (rows ``[a:b]``): all of
    them, the others than the target's, or one (1-D), each read checked against the
    file's size and modification time when opened.
    """

    def __init__(self, path: str, array: np.ndarray, columns=None, *, one_d=False,
                 stat=None):
        self._path, self._arr = path, array
        self._cols = None if columns is None else np.asarray(columns, dtype=np.int64)
        self._stat = stat or _stat(path)
        n = int(array.shape[0])
        if one_d:
            self.shape = (n,)
        elif array.ndim == 1:
            self.shape = (n,)
        else:
            self.shape = (n, int(array.shape[1]) if self._cols is None else len(self._cols))
        self.ndim = len(self.shape)
        self._one_d = one_d
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(".npy columns are read by row slices [a:b]")
        if _stat(self._path) != self._stat:
            raise DataError(f"{self._path} changed while it was read (size or modification "
                            "time): a file must not change under a run")
        rows = self._arr[key]
        if self._cols is None:
            return np.asarray(rows)
        if self._one_d:
            return np.asarray(rows[:, int(self._cols[0])])
        return np.ascontiguousarray(rows[:, self._cols])


def _load_npy(path: str) -> np.ndarray:
    from natgrad_stream._files import check_regular

    check_regular(path)
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})") from exc


def open_npy(path, *, x: str | None = "X", y: str | None = "y", w: str | None = None,
             chunk_rows: int | None = None, exclude=()):
    """An :class:`~natgrad_stream.data.stream.ArraySource` over a memory-mapped ``.npy``
    matrix of features.

    ``y`` and ``w`` are each a second ``.npy`` file (1-D, or one column) or a column index
    of the matrix (which then leaves the features); ``x`` must be left at its default
    (``"X"``: every other column, and not the column indices in ``exclude``) or be a
    comma-separated list of column indices.
    """
    from natgrad_stream.data.stream import ArraySource

    path = os.fspath(path)
    M = _load_npy(path)
    if M.ndim != 2:
        raise DataError(f"{path} holds an array of shape {M.shape}; the features file must "
                        "be 2-D (rows × features)")
    stat = _stat(path)
    d = int(M.shape[1])
    taken: list[int] = []

    def part(spec, role):
        if spec is None:
            return None
        text = str(spec)
        if text.lstrip("-").isdigit():
            j = int(text)
            if not -d <= j < d:
                raise DataError(f"--{role} {text}: {path} has {d} columns (0..{d - 1})")
            taken.append(j % d)
            return NpyColumns(path, M, [j % d], one_d=True, stat=stat)
        if Path(text).suffix.lower() in NPY_SUFFIXES or os.path.exists(text):
            A = _load_npy(text)
            if A.ndim == 2 and A.shape[1] == 1:
                return NpyColumns(text, A, [0], one_d=True)
            if A.ndim != 1:
                raise DataError(f"{text} holds shape {A.shape}; a {role} file must be 1-D")
            return NpyColumns(text, A)
        raise DataError(f"a .npy source takes --{role} as a second .npy file or a column "
                        f"index of {path}, got {text!r}")

    Y = part(y, "y")
    W = part(w, "w")
    if x in (None, "X"):
        taken += [int(e) % d for e in exclude if e is not None
                  and str(e).lstrip("-").isdigit() and -d <= int(e) < d]
        cols = [j for j in range(d) if j not in taken]
    else:
        try:
            cols = [int(s) % d for s in str(x).split(",") if s.strip()]
        except ValueError:
            raise DataError(f"--x {x!r}: a .npy source's features are column indices "
                            "(e.g. 0,1,2), or leave --x out for every column") from None
    X = NpyColumns(path, M, None if cols == list(range(d)) else cols, stat=stat)
    source = ArraySource(X, Y, W, chunk_rows=chunk_rows,
                         names=("X" if x in (None, "X") else str(x), str(y or "y"),
                                str(w or "w")), name=os.path.basename(path))
    source.feature_names = [f"x{c}" for c in cols]  # no names: x<column index>
    source.table_files = sorted({path, *(str(s) for s in (y, w)
                                         if s is not None and os.path.isfile(str(s)))})
    return source


# -- identity ------------------------------------------------------------------------------
def table_identity(data) -> dict:
    """What a run trained on a table file or directory records: each file's size,
    modification time and a digest of its metadata (a Parquet file's footer; another
    file's first and last 64 KiB).
    """
    path = Path(os.fspath(data))
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
    out = {}
    for f in files:
        size, mtime = _stat(str(f))
        out[str(f.relative_to(path)) if path.is_dir() else f.name] = {
            "size": size, "mtime_ns": mtime, "footer": _edge_digest(f, size)}
    return {"path": str(path.resolve()), "arrays": {}, "files": out}


def _edge_digest(path: Path, size: int) -> str:
    """A digest of a Parquet file's footer (its metadata), or of another file's edges."""
    with open(path, "rb") as fh:
        if path.suffix.lower() in PARQUET_SUFFIXES and size >= 12:
            fh.seek(size - 8)
            n = int.from_bytes(fh.read(4), "little")
            fh.seek(max(0, size - 8 - n))
            body = fh.read()
        else:
            body = fh.read(_EDGE_BYTES)
            fh.seek(max(0, size - _EDGE_BYTES))
            body += fh.read()
    return hashlib.blake2b(body, digest_size=12).hexdigest()


def compare_files(recorded: dict, current: dict) -> tuple[list, list]:
    """``(differences, notes)`` of two :func:`table_identity` file maps: a file missing,
    added, or of another size or metadata is a difference; a new modification time alone
    a note.
    """
    differences, notes = [], []
    for name, old in recorded.items():
        new = current.get(name)
        if new is None:
            differences.append(f"file {name!r} is missing")
        elif old["size"] != new["size"]:
            differences.append(f"file {name!r} has {new['size']:,} bytes, the run read "
                               f"{old['size']:,}")
        elif old["footer"] != new["footer"]:
            differences.append(f"file {name!r} has other metadata (footer)")
        elif old["mtime_ns"] != new["mtime_ns"]:
            notes.append(f"file {name!r} was modified since the run read it (same size "
                         "and metadata; its rows are compared as they are read)")
    for name in sorted(set(current) - set(recorded)):
        differences.append(f"file {name!r} was added")
    return differences, notes
