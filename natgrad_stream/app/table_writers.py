"""Writing tables of predictions block by block: Zarr, Parquet or CSV, chosen by extension.

A table is a few named *fields* (``proba``, ``class``, ...), each a float64 or int64
array of ``(rows,)`` or ``(rows, k)``, written in consecutive row blocks so that memory
stays bounded whatever the number of rows:

``.zarr``
    One array per field (1-D or 2-D, chunks of the source's rows), written with the
    project's checksummed zstd and each array's manifest
    (:mod:`natgrad_stream.data.manifest`), so readers verify it as they verify
    ``make-data`` stores; the column names and labels in the group's attributes.
``.parquet``
    One column per field column (``proba_<class>``, ...), a row group per block; the
    ``class`` column holds the labels (strings when the classes have names). Needs pyarrow.
``.csv``
    The same columns with a header line; floats in the shortest form that reads back to
    the same float64 (pyarrow's writer when installed, else Python's ``repr``).

Every writer writes to a temporary name beside the output (``.NAME.partial-PID``) and
renames it into place only once the last block is written (:func:`atomic_output`): an
interrupted or failed write leaves no file that looks complete, and an existing output is
refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
from pathlib import Path

import numpy as np

from natgrad_stream.errors import OptionError

FORMATS = {".zarr": "zarr", ".parquet": "parquet", ".csv": "csv"}
#: zstd level of Zarr outputs: predictions are float64s whose mantissas do not compress
#: (level 1 kept 94% of the bytes of probabilities, level −1 100%) at half the CPU
#: (36 → 19 ns a row of (n, 2) probabilities); the frames keep their checksums.
OUTPUT_ZSTD_LEVEL = -1
#: Threads formatting a CSV block's text at once (see :class:`CSVTableWriter`).
CSV_FORMAT_THREADS = 2
#: A CSV block is cut into slices of at least this many rows (one thread below it).
CSV_SLICE_MIN_ROWS = 4096
#: Rows pyarrow formats per batch: its default, 1,024, took 13% more CPU a row (268
#: against 234 ns for two probabilities and a class, load 8.6).
CSV_FORMAT_BATCH_ROWS = 65536


def output_format(path) -> str:
    """``zarr``, ``parquet`` or ``csv`` from ``path``'s extension (OptionError otherwise)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(f"--out {path}: unknown output format {suffix or '(no extension)'!r}"
                          f"; name the file .zarr, .parquet or .csv")
    return FORMATS[suffix]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def refuse_existing(path, overwrite: bool) -> None:
    """FileExistsError when ``path`` exists and not ``overwrite``."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (Python: overwrite=True) to "
                              "replace it")


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = False):
    """Yield a temporary path beside ``path`` to write (a file or a directory); on success
    it replaces ``path``, on any exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        refuse_existing(path, overwrite)  # created meanwhile by someone else
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise



def table_columns(fields: dict, names: dict) -> list[str]:
    """The flat column names: ``names[field]`` (a list for 2-D fields) in field order."""
    out = []
    for field in fields:
        out.extend(names[field])
    return out


class TableWriter:
    """Base: ``write(block)`` per block of rows, then ``finish()``; ``abort()`` on failure.

    Parameters
    ----------
    path : Path
        The temporary path to write (see :func:`atomic_output`).
    fields : dict
        ``{field: columns}`` (1 for a 1-D field), in column order.
    names : dict
        ``{field: [column names]}``.
    labels : dict
        ``{field: labels}`` for fields of codes written as labels in tables (``class``).
    rows, chunk_rows : int
        Rows in all (None when unknown) and rows per Zarr chunk.
    attrs : dict
        What the Zarr group's attributes record (also the Parquet file's metadata).
    """

    def __init__(self, path: Path, fields: dict, names: dict, labels: dict, rows,
                 chunk_rows: int, attrs: dict):
        self.path, self.fields, self.names, self.labels = path, fields, names, labels
        self.rows, self.chunk_rows, self.attrs = rows, int(chunk_rows), attrs
        self.written = 0

    def _flat(self, block: dict) -> dict:
        """``{column name: 1-D array}`` of a block; a field of codes with labels other
        than the codes themselves as :class:`Coded` (codes and their labels).
        """
        out = {}
        for field, k in self.fields.items():
            a = block[field]
            if k == 1:
                labels = self.labels.get(field)
                plain = labels is None or list(labels) == list(range(len(labels)))
                out[self.names[field][0]] = a if plain else Coded(a, labels)
            else:  # contiguous columns (strided ones cost pyarrow 2.5× more)
                for name, column in zip(self.names[field], np.ascontiguousarray(a.T),
                                        strict=True):
                    out[name] = column
        return out

    def abort(self) -> None:
        """Release what the writer holds (its output is removed by the caller)."""


class Coded:
    """A column of integer codes standing for ``labels[code]``."""

    def __init__(self, codes: np.ndarray, labels):
        self.codes, self.labels = codes, [str(v) for v in labels]

    def __len__(self) -> int:
        return len(self.codes)

    def values(self) -> np.ndarray:
        """The labels, row by row."""
        return np.asarray(self.labels, dtype=object)[self.codes]


def _arrow_column(pa, column):
    """``column`` as an Arrow array without a copy (numbers) or as a dictionary of labels
    (:class:`Coded`), built from buffers: ``pyarrow.array`` would import pandas (a second
    on the first block).
    """
    if isinstance(column, Coded):
        encoded = [v.encode("utf-8") for v in column.labels]
        offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int32)
        labels = pa.Array.from_buffers(pa.string(), len(encoded),
                                       [None, pa.py_buffer(offsets),
                                        pa.py_buffer(b"".join(encoded))])
        codes = np.ascontiguousarray(column.codes, dtype=np.int32)
        index = pa.Array.from_buffers(pa.int32(), len(codes), [None, pa.py_buffer(codes)])
        return pa.DictionaryArray.from_arrays(index, labels)
    column = np.ascontiguousarray(column)
    kind = pa.from_numpy_dtype(column.dtype)
    return pa.Array.from_buffers(kind, len(column), [None, pa.py_buffer(column)])


def _arrow_table(pa, flat: dict):
    return pa.Table.from_arrays([_arrow_column(pa, c) for c in flat.values()],
                                names=list(flat))


class ZarrTableWriter(TableWriter):
    """One checksummed array per field, with manifests; attributes on the group."""

    def __init__(self, *args):
        super().__init__(*args)
        import zarr

        from natgrad_stream.data.manifest import checksummed_zstd, recording_view

        if self.rows is None:
            raise OptionError("a Zarr output needs the number of rows in advance (data "
                              "with a known length, e.g. a Zarr store or arrays)")
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.arrays = {}
        for field, k in self.fields.items():
            shape = (self.rows,) if k == 1 else (self.rows, k)
            dims = ("row",) if k == 1 else ("row", f"{field}_column")
            arr = self.group.create_array(
                field, shape=shape, chunks=(min(self.chunk_rows, max(self.rows, 1)),) +
                shape[1:], dtype=_code_dtype(len(self.labels[field])) if field in self.labels
                else np.int64 if field == "class" else np.float64,
                compressors=checksummed_zstd(OUTPUT_ZSTD_LEVEL),
                config={"write_empty_chunks": True},
                dimension_names=dims)
            self.arrays[field] = (arr, *recording_view(arr))

    def write(self, block: dict) -> None:
        n = len(next(iter(block.values())))
        for field, (_, view, _) in self.arrays.items():
            view[self.written:self.written + n] = block[field]
        self.written += n

    def finish(self) -> None:
        from natgrad_stream.data.manifest import record_manifest

        if self.written != self.rows:
            raise RuntimeError(f"wrote {self.written} rows of {self.rows}")
        for field, (arr, _, seen) in self.arrays.items():
            arr = record_manifest(arr, seen, rows=self.rows, replace=True)
            arr.update_attributes({"columns": list(self.names[field]),
                                   **({"labels": [str(v) for v in self.labels[field]]}
                                      if field in self.labels else {})})
        self.group.attrs["natgrad_stream_predictions"] = self.attrs


class ParquetTableWriter(TableWriter):
    """A Parquet file, a row group per block."""

    def __init__(self, *args):
        super().__init__(*args)
        pa, pq = _pyarrow("Parquet")
        self._pa = pa
        import json

        self._writer = None
        self._meta = {b"natgrad_stream_predictions": json.dumps(self.attrs).encode()}
        self._pq = pq

    def write(self, block: dict) -> None:
        table = _arrow_table(self._pa, self._flat(block))
        if self._writer is None:
            schema = table.schema.with_metadata(self._meta)
            # no dictionary for float columns: trying one costs 4× the write of random
            # floats and saves nothing; the labels of a class column do compress so
            self._writer = self._pq.ParquetWriter(
                str(self.path), schema,
                use_dictionary=[n for n, t in zip(schema.names, schema.types, strict=True)
                                if not self._pa.types.is_floating(t)])
        self._writer.write_table(table)
        self.written += table.num_rows

    def finish(self) -> None:
        if self._writer is None:  # no rows: an empty file with the columns
            self.write({f: np.empty((0, k) if k > 1 else 0, dtype=np.int64 if f == "class"
                                    else np.float64) for f, k in self.fields.items()})
        self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()


class CSVTableWriter(TableWriter):
    """Comma-separated values with a header line.

    With pyarrow, a block's rows are cut into :data:`CSV_FORMAT_THREADS` slices formatted
    at once into memory (pyarrow formats one slice on one core; the shortest round-trip
    form of the floats is most of a CSV output's cost) and written in order: the same
    bytes as pyarrow's writer.
    """

    def __init__(self, *args):
        super().__init__(*args)
        try:
            import pyarrow
            import pyarrow.csv
        except ImportError:
            self._pa = None
            self._fh = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        else:
            self._pa, self._fh = pyarrow, None
        self._out = self._pool = None

    def _format(self, table, header: bool):
        """``table`` as CSV text (a pyarrow buffer)."""
        import pyarrow.csv as pcsv

        sink = self._pa.BufferOutputStream()
        pcsv.write_csv(table, sink, write_options=pcsv.WriteOptions(
            include_header=header, quoting_style="needed", batch_size=CSV_FORMAT_BATCH_ROWS))
        return sink.getvalue()

    def write(self, block: dict) -> None:
        flat = self._flat(block)
        if self._pa is not None:
            table = _arrow_table(self._pa, flat)
            if self._out is None:
                self._out = open(self.path, "wb")  # noqa: SIM115
                self._out.write(self._format(table.slice(0, 0), header=True))
            n = table.num_rows
            k = max(1, min(CSV_FORMAT_THREADS, n // CSV_SLICE_MIN_ROWS))
            step = max(1, -(-n // k))
            slices = [table.slice(a, step) for a in range(0, n, step)] or [table]
            if len(slices) > 1 and self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(CSV_FORMAT_THREADS - 1,
                                                thread_name_prefix="natgrad-csv")
            jobs = [self._pool.submit(self._format, t, False) for t in slices[1:]]
            texts = [self._format(slices[0], False)] + [job.result() for job in jobs]
            for text in texts:
                self._out.write(text)
        else:
            w = csv.writer(self._fh, lineterminator="\n")
            if not self.written:
                w.writerow(list(flat))
            cols = [(c.values() if isinstance(c, Coded) else c).tolist()
                    for c in flat.values()]
            w.writerows(zip(*cols, strict=True))
        self.written += len(next(iter(flat.values())))

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def finish(self) -> None:
        self._stop_pool()
        if self._out is not None:
            self._out.close()
            return
        if self._fh is None:  # no rows: the header alone
            self._fh = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        if not self.written:
            csv.writer(self._fh, lineterminator="\n").writerow(
                table_columns(self.fields, self.names))
        self._fh.close()

    def abort(self) -> None:
        self._stop_pool()
        for handle in (self._out, self._fh):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()


WRITERS = {"zarr": ZarrTableWriter, "parquet": ParquetTableWriter, "csv": CSVTableWriter}


def _code_dtype(n_labels: int):
    """The smallest signed integer dtype holding the codes ``0 … n_labels − 1``."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_labels <= np.iinfo(dtype).max + 1:
            return dtype
    return np.int64


def _pyarrow(what: str):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise OptionError(f"writing {what} needs pyarrow ({exc}); install it with pip "
                          "install 'natgrad-stream[parquet]'") from None
    return pa, pq
