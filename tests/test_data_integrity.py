"""No silent wrong answers from the data layer: a chunk missing from the store, damaged
chunk bytes of any codec, a shape enlarged in zarr.json and impossible metadata are each a
:class:`DataError` naming the array (and chunk), never fill values, tracebacks or a
MemoryError.
"""

import json
import shutil
import time

import numpy as np
import pytest
import zarr

from natgrad_stream.app.cli import main
from natgrad_stream.data import as_source
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.errors import DataError

ROWS, FEATURES, CHUNK = 5000, 4, 1000


def opts_default_budget() -> int:
    from natgrad_stream._constants import DEFAULT_READ_BUFFER_BYTES

    return DEFAULT_READ_BUFFER_BYTES


def _stream_all(source, **kw):
    """Stream one epoch; the number of rows delivered."""
    n = 0
    with source.batches(**{"batch_size": 500, "epochs": 1, "seed": 0, **kw}) as stream:
        for batch in stream:
            n += batch.X.shape[0]
    return n


def _chunk_file(path, name, c):
    """The file of chunk ``c`` (along rows) of array ``name``."""
    return path / name / "c" / str(c) / "0" if name == "X" else path / name / "c" / str(c)


def _made(path, **kw):
    make_dataset(path, task="logistic", rows=ROWS, features=FEATURES, chunk_rows=CHUNK,
                 **kw)
    return path


def _written(path, compressors, *, rows=ROWS, y_chunk=CHUNK):
    """A logistic-shaped group written by zarr directly with ``compressors``."""
    rng = np.random.default_rng(0)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    cfg = {"write_empty_chunks": True}
    g.create_array("X", shape=(rows, FEATURES), chunks=(CHUNK, FEATURES), dtype="float32",
                   compressors=compressors, config=cfg)[...] = \
        rng.standard_normal((rows, FEATURES))
    g.create_array("y", shape=(rows,), chunks=(y_chunk,), dtype="uint8",
                   compressors=compressors, config=cfg)[...] = rng.integers(0, 2, rows)
    return path


CODECS = {
    "gzip": zarr.codecs.GzipCodec(level=1),
    "blosc": zarr.codecs.BloscCodec(cname="lz4"),
    "none": None,
}


def _store(tmp_path, kind):
    path = tmp_path / f"{kind}.zarr"
    if kind in ("zstd", "zstd-via-zarr"):
        return _made(path)
    return _written(path, CODECS[kind])


def _source(path, kind):
    src = as_source(path)
    if kind == "zstd-via-zarr":  # zarr's own codec pipeline instead of the direct decoder
        src._direct = {}
    return src


# -- missing chunks ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zstd", "zstd-via-zarr", "gzip", "blosc", "none"])
@pytest.mark.parametrize("name", ["X", "y"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_a_deleted_chunk_is_an_error_naming_array_and_chunk(tmp_path, kind, name, shuffle):
    path = _store(tmp_path, kind)
    _chunk_file(path, name, 3).unlink()
    with pytest.raises(DataError) as info:
        _stream_all(_source(path, kind), shuffle=shuffle)
    err = info.value
    assert (err.array, err.chunk) == (name, 3)
    assert str(err).startswith(f"array {name!r}, chunk 3")
    assert "missing from the store" in str(err) and "write_empty_chunks" in str(err)


def test_a_missing_chunk_of_differently_chunked_targets_is_named(tmp_path):
    """Targets in 250-row chunks under 1000-row chunks of X: zarr's path, named by key."""
    path = _written(tmp_path / "d.zarr", CODECS["gzip"], y_chunk=250)
    (path / "y" / "c" / "13").unlink()  # rows 3250:3500, in the source's chunk 3
    with pytest.raises(DataError) as info:
        _stream_all(as_source(path))
    assert (info.value.array, info.value.chunk, info.value.row) == ("y", 3, 3250)
    assert "c/13" in str(info.value)


def test_a_missing_chunk_is_an_error_in_a_chunk_window_located_in_the_full_data(tmp_path):
    from natgrad_stream.data.window import chunk_window, locate_in_full_data

    path = _made(tmp_path / "d.zarr")
    _chunk_file(path, "X", 3).unlink()
    source = as_source(path)
    chunks = np.array([1, 3, 4])
    assert _stream_all(chunk_window(source, np.array([0, 2, 4])), shuffle=False) == 3 * CHUNK
    with pytest.raises(DataError) as info:
        _stream_all(chunk_window(source, chunks), shuffle=False)
    assert (info.value.array, info.value.chunk) == ("X", 1)  # the window's second chunk
    located = locate_in_full_data(info.value, chunks, source.chunk_rows)
    assert (located.array, located.chunk, located.row) == ("X", 3, 3 * CHUNK)


@pytest.mark.parametrize("name", ["X", "y"])
def test_cli_fit_and_evaluate_exit_2_on_a_missing_chunk(tmp_path, capsys, name):
    good = _made(tmp_path / "good.zarr")
    run = tmp_path / "run"
    assert main(["fit", str(good), "--model", "logistic", "--out", str(run)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.zarr"
    shutil.copytree(good, bad)
    _chunk_file(bad, name, 3).unlink()
    for argv in (["fit", str(bad), "--model", "logistic", "--out", str(tmp_path / "r2")],
                 ["fit", str(bad), "--model", "logistic", "--out", str(tmp_path / "r3"),
                  "--optimizer", "lbfgs", "--window", "2", "--lbfgs-rounds", "3"],
                 ["evaluate", str(run), str(bad)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"array {name!r}, chunk 3" in err and "missing from the store" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_shape_grown_in_zarr_json_is_a_missing_chunk_error(tmp_path):
    path = _made(tmp_path / "d.zarr")
    for name in ("X", "y"):
        meta = json.loads((path / name / "zarr.json").read_text())
        assert meta["shape"][0] == ROWS
        meta["shape"][0] = ROWS + 1000
        (path / name / "zarr.json").write_text(json.dumps(meta))
    assert as_source(path).n_rows == ROWS + 1000
    for shuffle in (True, False):
        with pytest.raises(DataError) as info:
            _stream_all(as_source(path), shuffle=shuffle)
        assert info.value.array in ("X", "y") and info.value.chunk == 5
        assert "missing from the store" in str(info.value)


def test_the_project_writer_stores_chunks_that_hold_only_the_fill_value(tmp_path):
    """One-row chunks: about half the y chunks are 0, zarr's fill value; all are stored."""
    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=60, features=2, chunk_rows=1)
    y = zarr.open_group(str(path), mode="r")["y"][...]
    assert (y == 0).sum() > 5
    assert sorted(int(p.name) for p in (path / "y" / "c").iterdir()) == list(range(60))
    assert _stream_all(as_source(path), batch_size=7) == 60


def test_a_store_written_without_empty_chunks_is_refused_then_repaired(tmp_path):
    """Zarr's default (write_empty_chunks=False) omits all-fill chunks: the error says how
    to store them, and write_missing_chunks stores them as the fill value.
    """
    from natgrad_stream.data.metadata import write_missing_chunks

    path = tmp_path / "d.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    rng = np.random.default_rng(1)
    g.create_array("X", shape=(400, 3), chunks=(100, 3), dtype="float64")[...] = \
        rng.standard_normal((400, 3))
    y = np.ones(400, dtype=np.uint8)
    y[200:300] = 0  # chunk 2 holds only the fill value: not written
    g.create_array("y", shape=(400,), chunks=(100,), dtype="uint8")[...] = y
    assert not (path / "y" / "c" / "2").exists()
    with pytest.raises(DataError) as info:
        _stream_all(as_source(path), batch_size=50)
    assert (info.value.array, info.value.chunk) == ("y", 2)
    assert "write_missing_chunks" in str(info.value)
    assert write_missing_chunks(path) == {"X": 0, "y": 1}
    assert (path / "y" / "c" / "2").is_file()
    with as_source(path).batches(batch_size=400, shuffle=False, chunks_per_read=4) as stream:
        np.testing.assert_array_equal(next(iter(stream)).y, y)


def test_reads_outside_a_stream_refuse_missing_chunks_too(tmp_path):
    from natgrad_stream.data.stream import read_rows
    from natgrad_stream.data.window import RowSpans

    path = _made(tmp_path / "d.zarr")
    g = zarr.open_group(str(path), mode="r")
    y = g["y"][...]
    np.testing.assert_array_equal(read_rows(RowSpans(g["y"], [(4000, 5000), (0, 500)])),
                                  np.concatenate([y[4000:], y[:500]]))
    _chunk_file(path, "y", 3).unlink()
    np.testing.assert_array_equal(read_rows(g["y"], 0, 3000), y[:3000])
    with pytest.raises(DataError) as info:
        read_rows(g["y"])
    assert (info.value.array, info.value.chunk) == ("y", 3)
    with pytest.raises(DataError) as info:  # the view's rows 1000:1500 are y's chunk 3
        read_rows(RowSpans(g["y"], [(0, 1000), (3000, 3500)]))
    assert (info.value.array, info.value.chunk, info.value.row) == ("y", 1, 1000)


# -- damaged chunk bytes -----------------------------------------------------------------------
def _flip(path, start, count=4):
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind,name,where", [
    ("gzip", "X", "middle"), ("gzip", "y", "middle"), ("gzip", "X", "header"),
    ("blosc", "X", "header"), ("blosc", "y", "header"), ("blosc", "X", "magic"),
    ("zstd-via-zarr", "X", "header"),
    ("gzip", "X", "truncated"), ("blosc", "X", "truncated"), ("zstd-via-zarr", "y", "empty"),
])
def test_damaged_chunk_bytes_of_any_codec_are_an_error_naming_array_and_chunk(
        tmp_path, kind, name, where):
    path = _store(tmp_path, kind)
    blob = _chunk_file(path, name, 2)
    size = blob.stat().st_size
    if where == "middle":
        _flip(blob, size // 2)
    elif where == "header":
        _flip(blob, 8)  # gzip: mtime; blosc: sizes; zstd: frame content
        if kind == "gzip":
            _flip(blob, size - 6)  # the CRC-32 trailer
    elif where == "magic":
        _flip(blob, 4)
    elif where == "truncated":
        blob.write_bytes(blob.read_bytes()[:size // 2])
    else:
        blob.write_bytes(b"")
    with pytest.raises(DataError) as info:
        _stream_all(_source(path, kind))
    assert (info.value.array, info.value.chunk) == (name, 2)


def test_cli_exits_2_on_a_damaged_blosc_chunk(tmp_path, capsys):
    path = _written(tmp_path / "d.zarr", CODECS["blosc"])
    _flip(_chunk_file(path, "X", 4), 8)
    assert main(["fit", str(path), "--model", "logistic", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "array 'X', chunk 4" in err and "Traceback" not in err


# -- metadata bounds ---------------------------------------------------------------------------
def _edit(path, names, edit):
    for name in names:
        meta = json.loads((path / name / "zarr.json").read_text())
        edit(meta)
        (path / name / "zarr.json").write_text(json.dumps(meta))


def _set_rows(rows):
    def edit(meta):
        meta["shape"][0] = rows
    return edit


def _set_chunk_rows(rows):
    def edit(meta):
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = rows
    return edit


@pytest.mark.parametrize("case", ["rows-1e15", "chunk-0-X", "chunk-0-y", "chunk-huge"])
def test_impossible_metadata_is_refused_at_once(tmp_path, capsys, case):
    path = _made(tmp_path / "d.zarr", seed=1)
    if case == "rows-1e15":
        _edit(path, ["X", "y"], _set_rows(10**15))
    elif case == "chunk-huge":  # one chunk of 10^14 rows x 4 float32
        _edit(path, ["X", "y"], _set_rows(10**14))
        _edit(path, ["X", "y"], _set_chunk_rows(10**14))
    else:
        _edit(path, [case[-1]], _set_chunk_rows(0))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        _stream_all(as_source(path))
    assert time.perf_counter() - t0 < 1.0
    assert info.value.array == ("y" if case == "chunk-0-y" else "X")
    assert ("every chunk dimension must be at least 1" if case.startswith("chunk-0")
            else "memory") in str(info.value)
    t0 = time.perf_counter()
    assert main(["fit", str(path), "--model", "logistic", "--out", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - t0 < 1.0
    assert "Traceback" not in capsys.readouterr().err


def test_stream_buffers_beyond_memory_are_refused_before_allocation(tmp_path):
    path = _made(tmp_path / "d.zarr")
    source = as_source(path)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="memory"):  # without a byte budget
        source.batches(batch_size=100, prefetch=10**9, read_buffer_bytes=None)
    assert time.perf_counter() - t0 < 1.0
    # within the budget (the default) the same plans are lowered to fit; a read never
    # holds more rows than the data
    for kw in ({"prefetch": 10**9}, {"chunks_per_read": 10**12}):
        assert _stream_all(source, **kw) == ROWS
        assert source.read_plan(**kw).nbytes <= opts_default_budget()
    assert time.perf_counter() - t0 < 5.0
    # a batch never straddles reads: its buffer holds at most one read
    assert _stream_all(source, batch_size=10**13) == ROWS

