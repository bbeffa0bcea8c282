"""Data layer: plans, shuffle, resume, sources, validation, threads, memory bound."""

import threading
import tracemalloc

import numpy as np
import pytest
import zarr
from numpy.testing import assert_array_equal

from natgrad_stream.data import (
    ArraySource,
    Cursor,
    IteratorSource,
    as_source,
    epoch_plan,
    open_zarr,
)
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.errors import DataError
from natgrad_stream.models.glm import check_binary_labels

from .conftest import write_group


def _arrays(n=1000, d=3, dtype=np.float32):
    X = np.arange(n * d, dtype=dtype).reshape(n, d)
    y = (np.arange(n) % 2).astype(np.uint8)
    return X, y


def _collect(stream):
    out = []
    with stream:
        for b in stream:
            out.append((b.rows.copy(), b.X.copy(), None if b.y is None else b.y.copy(), b.cursor))
    return out


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n,chunk,per_read,batch", [(1000, 64, 3, 50), (999, 100, 4, 7),
                                                    (10, 64, 2, 3), (257, 16, 1, 16)])
def test_every_row_once_per_epoch_and_batches_stay_within_reads(shuffle, n, chunk, per_read,
                                                                batch):
    X, y = _arrays(n)
    src = ArraySource(X, y, chunk_rows=chunk)
    got = _collect(src.batches(batch_size=batch, epochs=2, seed=5, shuffle=shuffle,
                               chunks_per_read=per_read))
    rows = np.concatenate([g[0] for g in got])
    assert len(rows) == 2 * n
    for e in range(2):
        assert_array_equal(np.sort(rows[e * n:(e + 1) * n]), np.arange(n))
    for r, Xb, yb, _ in got:
        assert_array_equal(Xb, X[r])
        assert_array_equal(yb, y[r])
        assert len(r) <= batch
        # a batch never straddles reads: all its rows come from the same read's chunks
        reads = {tuple(sorted(p)) for p in epoch_plan(n, chunk, per_read, 5, 0, shuffle)}
        chunk_ids = set((r // chunk).tolist())
        assert any(chunk_ids <= set(p) for p in reads) or any(
            chunk_ids <= set(p) for p in
            (tuple(q) for q in epoch_plan(n, chunk, per_read, 5, 1, shuffle)))
    if not shuffle:
        assert_array_equal(rows[:n], np.arange(n))


def test_shuffle_is_reproducible_per_seed_and_epoch():
    X, y = _arrays(2000)
    src = ArraySource(X, y, chunk_rows=100)

    def order(seed):
        return np.concatenate([g[0] for g in _collect(
            src.batches(batch_size=64, epochs=2, seed=seed))])

    a, b, c = order(1), order(1), order(2)
    assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:2000], a[2000:])  # epochs differ


@pytest.mark.parametrize("stop_after", [0, 1, 5, 12, 13, 20, 31])
def test_resume_from_any_cursor_equals_uninterrupted(stop_after):
    X, y = _arrays(1000)
    src = ArraySource(X, y, chunk_rows=64)
    kw = dict(batch_size=50, epochs=2, seed=9, chunks_per_read=3)
    full = _collect(src.batches(**kw))
    start = full[stop_after - 1][3] if stop_after else Cursor()
    rest = _collect(src.batches(start=start, **kw))
    assert len(rest) == len(full) - stop_after
    for (r1, X1, _, c1), (r2, X2, _, c2) in zip(full[stop_after:], rest, strict=True):
        assert_array_equal(r1, r2)
        assert_array_equal(X1, X2)
        assert c1 == c2
    assert full[-1][3] == Cursor(2, 0, 0, 2000)


def test_numpy_and_zarr_sources_give_identical_batches(tmp_path):
    X, y = _arrays(700)
    write_group(tmp_path / "g.zarr", X=X, y=y)
    z = open_zarr(tmp_path / "g.zarr")
    assert z.chunk_rows == 100
    n = ArraySource(X, y, chunk_rows=100)
    a = _collect(z.batches(batch_size=64, seed=3, epochs=1))
    b = _collect(n.batches(batch_size=64, seed=3, epochs=1))
    for (r1, X1, y1, _), (r2, X2, y2, _) in zip(a, b, strict=True):
        assert_array_equal(r1, r2)
        assert_array_equal(X1, X2)
        assert_array_equal(y1, y2)
    assert a[0][1].dtype == np.float32 and a[0][2].dtype == np.float64


def test_nan_in_chunk_3_names_array_chunk_row_column_after_earlier_reads(tmp_path):
    X, y = _arrays(1000)
    X = X.astype(np.float64)
    X[345, 2] = np.nan
    write_group(tmp_path / "g.zarr", X=X, y=y)
    src = open_zarr(tmp_path / "g.zarr")
    delivered = []
    with pytest.raises(DataError) as info:
        with src.batches(batch_size=10, shuffle=False, chunks_per_read=1) as stream:
            for b in stream:
                delivered.append(b.rows)
    err = info.value
    assert (err.array, err.chunk, err.row, err.column) == ("X", 3, 345, 2)
    assert "non-finite" in str(err) and "'X'" in str(err) and "chunk 3" in str(err)
    assert np.concatenate(delivered).max() == 299  # reads 0-2 were all delivered


def test_bad_targets_and_weights(tmp_path):
    X, y = _arrays(300)
    y = y.astype(np.float64)
    y[150] = np.inf
    with pytest.raises(DataError, match=r"array 'y', chunk 1, row 150"):
        _collect(ArraySource(X, y, chunk_rows=100).batches(batch_size=10))
    y[150] = 2
    with pytest.raises(DataError, match=r"row 150.*outside the logistic"):
        _collect(ArraySource(X, y, chunk_rows=100).batches(batch_size=10,
                                                           checks=[check_binary_labels]))
    w = np.ones(300)
    w[7] = -1
    with pytest.raises(DataError, match=r"array 'w', chunk 0, row 7.*negative"):
        _collect(ArraySource(X, None, w, chunk_rows=100).batches(batch_size=10))


def test_open_zarr_structural_errors(tmp_path):
    X, y = _arrays(10)
    write_group(tmp_path / "g.zarr", X=X, labels=y, v=np.zeros(10), X1=np.zeros(10),
                Xi=np.zeros((10, 2), dtype=np.complex64), E=np.zeros((0, 3), np.float32),
                yshort=np.zeros(5))
    g = tmp_path / "g.zarr"
    with pytest.raises(DataError, match=r"array 'y'.*not found.*\['E', 'X'"):
        open_zarr(g)
    with pytest.raises(DataError, match="must be 2-D"):
        open_zarr(g, x="X1", y=None)
    with pytest.raises(TypeError, match="'Xi' has dtype complex64"):
        open_zarr(g, x="Xi", y=None)
    with pytest.raises(DataError, match="'E'.*empty"):
        open_zarr(g, x="E", y=None)
    with pytest.raises(DataError, match="'yshort'.*5 rows but 'X' has 10"):
        open_zarr(g, y="yshort")
    with pytest.raises(DataError, match="no Zarr group"):
        open_zarr(tmp_path / "missing.zarr")
    assert open_zarr(g, y="labels").has_targets


def test_iterator_source_splits_validates_and_counts():
    rng = np.random.default_rng(0)
    items = [(rng.standard_normal((n, 2)), np.ones(n)) for n in (5, 12, 3)]
    got = _collect(IteratorSource(iter(items)).batches(batch_size=4))
    assert [len(g[0]) for g in got] == [4, 1, 4, 4, 4, 3]
    assert got[-1][3].samples == 20 and got[-1][3].read_index == 3
    bad = [(np.zeros((2, 2)), np.ones(2)), (np.zeros((2, 3)), np.ones(2))]
    with pytest.raises(DataError, match="batch 1 has 3 features"):
        _collect(IteratorSource(iter(bad)).batches(batch_size=4))
    nan = [(np.array([[1.0, np.nan]]), np.ones(1))]
    with pytest.raises(DataError, match="batch 0 row 0 column 1"):
        _collect(IteratorSource(iter(nan)).batches(batch_size=4))
    with pytest.raises(TypeError, match="complex64"):
        IteratorSource(iter([(np.zeros((2, 2), dtype=np.complex64), np.ones(2))]))
    with pytest.raises(ValueError, match="one epoch"):
        IteratorSource(iter(items)).batches(batch_size=4, epochs=2)


def test_as_source_dispatch(tmp_path, small_zarr):
    X, y = _arrays(10)
    assert isinstance(as_source((X, y)), ArraySource)
    assert isinstance(as_source(X), ArraySource)
    assert isinstance(as_source(str(small_zarr)), ArraySource)
    assert isinstance(as_source(zarr.open_group(str(small_zarr), mode="r")), ArraySource)
    assert isinstance(as_source(iter([(X, y)])), IteratorSource)
    with pytest.raises(TypeError):
        as_source(42)


def _reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("natgrad-reader")]


def test_close_joins_reader_thread_on_early_break_and_on_error():
    X, y = _arrays(5000)
    src = ArraySource(X, y, chunk_rows=100)
    with src.batches(batch_size=10, prefetch=1) as stream:
        next(stream)
    assert not _reader_threads()
    X2 = X.astype(np.float64)
    X2[4000, 0] = np.nan
    with pytest.raises(DataError):
        for _ in ArraySource(X2, y, chunk_rows=100).batches(batch_size=1000):
            pass
    assert not _reader_threads()


def test_peak_memory_is_bounded_by_prefetch_not_dataset_size(tmp_path):
    """Streaming an 8× larger store allocates the same buffers (traced NumPy memory)."""
    peaks = []
    for rows in (40_000, 320_000):
        path = tmp_path / f"m{rows}.zarr"
        make_dataset(path, task="logistic", rows=rows, features=16, chunk_rows=4096, seed=0)
        src = open_zarr(path)
        tracemalloc.start()
        with src.batches(batch_size=512, chunks_per_read=2, prefetch=2) as stream:
            for _ in stream:
                pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    read_bytes = 2 * 4096 * (16 * 4 + 8 + 8)
    assert peaks[1] < 1.1 * peaks[0] + 1e6
    assert peaks[1] < 8 * read_bytes + 4e6  # (prefetch + 2) outputs + raw buffers + slack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finiteness_scan_finds_every_kind_of_bad_value_at_any_position(dtype):
    from natgrad_stream.data.validation import first_nonfinite

    x = np.random.default_rng(0).standard_normal(3 * 4096 + 17).astype(dtype)
    zero = dtype(0)
    assert first_nonfinite(x, zero) == -1
    for pos in (0, 1, 4095, 4096, 8200, x.size - 1):
        for bad in (np.inf, -np.inf, np.nan):
            y = x.copy()
            y[pos] = bad
            assert first_nonfinite(y, zero) == pos
    y = x.copy()
    y[[10, 20]] = [np.nan, np.inf]
    assert first_nonfinite(y, zero) == 10


def _all_rows(source):
    with source.batches(batch_size=1000, shuffle=False) as stream:
        parts = [(b.X.copy(), b.y.copy()) for b in stream]
    return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_direct_zstd_reads_equal_zarr_reads(tmp_path):
    """Whole-chunk zstd decoding straight into the buffer gives the zarr path's bytes,
    including a short last chunk and uint8 targets; an unwritten chunk is an error on both
    paths, never the fill value.
    """
    import zarr

    from natgrad_stream.data import ArraySource
    from natgrad_stream.data._zstd_direct import DirectChunks

    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w", zarr_format=3)
    codec = zarr.codecs.ZstdCodec(level=3, checksum=True)
    X = g.create_array("X", shape=(2500, 7), chunks=(600, 7), dtype="float32",
                       compressors=codec, fill_value=1.5)
    y = g.create_array("y", shape=(2500,), chunks=(600,), dtype="uint8", compressors=codec)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2500, 7)).astype(np.float32)
    X[:1200] = data[:1200]  # chunk 2 (rows 1200:1800) is never written
    X[1800:] = data[1800:]
    y[:] = rng.integers(0, 2, 2500)
    assert DirectChunks.for_array(g["X"]) is not None
    direct = ArraySource(g["X"], g["y"])
    assert all(v is not None for v in direct._direct.values())
    via_zarr = ArraySource(g["X"], g["y"])
    via_zarr._direct = {}
    for src in (direct, via_zarr):
        with pytest.raises(DataError, match="chunk is missing from the store") as info:
            _all_rows(src)
        assert (info.value.array, info.value.chunk) == ("X", 2)
    X[1200:1800] = data[1200:1800]
    Xd, yd = _all_rows(direct)
    Xz, yz = _all_rows(via_zarr)
    np.testing.assert_array_equal(Xd, Xz)
    np.testing.assert_array_equal(yd, yz)
    np.testing.assert_array_equal(Xd, data)


def test_direct_zstd_declines_other_layouts(tmp_path):
    import zarr

    from natgrad_stream.data._zstd_direct import DirectChunks

    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="w", zarr_format=3)
    blosc = g.create_array("a", shape=(100, 4), chunks=(10, 4), dtype="float64",
                           compressors=zarr.codecs.BloscCodec())
    split = g.create_array("b", shape=(100, 4), chunks=(10, 2), dtype="float64",
                           compressors=zarr.codecs.ZstdCodec())
    raw = g.create_array("c", shape=(100, 4), chunks=(10, 4), dtype="float64", compressors=None)
    for arr in (blosc, split, raw):
        assert DirectChunks.for_array(arr) is None
    assert DirectChunks.for_array(np.zeros((3, 2))) is None


def test_corrupt_chunk_names_array_and_chunk(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=3)
    X = g.create_array("X", shape=(300, 3), chunks=(100, 3), dtype="float64",
                       compressors=zarr.codecs.ZstdCodec())
    X[:] = np.ones((300, 3))
    g.create_array("y", shape=(300,), chunks=(100,), dtype="uint8")[:] = 1
    blob = tmp_path / "c.zarr" / "X" / "c" / "1" / "0"
    blob.write_bytes(blob.read_bytes()[:-7])
    with pytest.raises(DataError) as info:
        _collect(open_zarr(tmp_path / "c.zarr").batches(batch_size=50, shuffle=False,
                                                        chunks_per_read=1))
    assert (info.value.array, info.value.chunk) == ("X", 1)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_reading_works_in_a_forked_child_after_the_parent_read(tmp_path):
    """The decode pool is per process: a child forked after the parent has read still reads
    (an inherited pool has no threads and would hang).
    """
    import multiprocessing as mp

    X, y = _arrays(3000)
    write_group(tmp_path / "g.zarr", X=X, y=y)
    _collect(open_zarr(tmp_path / "g.zarr").batches(batch_size=500, shuffle=False))
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        rows = pool.apply_async(_count_rows, (str(tmp_path / "g.zarr"),)).get(timeout=20)
    assert rows == 3000


def _count_rows(path):
    return sum(b.X.shape[0] for b in _collect_batches(path))


def _collect_batches(path):
    with open_zarr(path).batches(batch_size=500, shuffle=False) as stream:
        return [b for b in stream]


def test_short_zstd_frame_is_an_error_not_stale_memory(tmp_path):
    """A valid zstd frame of the wrong size (here: two rows in a four-row chunk) must not
    leave part of the pooled buffer unwritten; zarr's own path refuses it too.
    """
    import zarr
    from numcodecs import Zstd

    from natgrad_stream.data._zstd_direct import frame_content_size

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    X = g.create_array("X", shape=(8, 2), chunks=(4, 2), dtype="float64",
                       compressors=zarr.codecs.ZstdCodec())
    X[:] = np.arange(16.0).reshape(8, 2)
    g.create_array("y", shape=(8,), chunks=(4,), dtype="uint8")[:] = 1
    short = Zstd().encode(np.full((2, 2), 7.0))
    assert frame_content_size(short) == 32
    assert frame_content_size(Zstd().encode(np.zeros((4, 2)))) == 64
    (tmp_path / "s.zarr" / "X" / "c" / "1" / "0").write_bytes(short)
    with pytest.raises(DataError) as info:
        _collect(open_zarr(tmp_path / "s.zarr").batches(batch_size=4, shuffle=False,
                                                        chunks_per_read=1))
    assert (info.value.array, info.value.chunk) == ("X", 1)
    assert "32 bytes" in str(info.value)


def test_frames_without_a_recorded_size_are_decoded_and_length_checked(tmp_path, monkeypatch):

    from natgrad_stream.data import _zstd_direct
    from natgrad_stream.data._zstd_direct import frame_content_size

    assert frame_content_size(b"\x28\xb5\x2f\xfd\x00\x58" + b"\x00" * 8) is None
    with pytest.raises(ValueError, match="not a zstd frame"):
        frame_content_size(b"not zstd at all")
    X, y = _arrays(1000)
    write_group(tmp_path / "g.zarr", X=X, y=y)
    expected = _collect(open_zarr(tmp_path / "g.zarr").batches(batch_size=100, shuffle=False))
    monkeypatch.setattr(_zstd_direct, "frame_content_size", lambda data: None)
    got = _collect(open_zarr(tmp_path / "g.zarr").batches(batch_size=100, shuffle=False))
    for (_, X1, y1, _), (_, X2, y2, _) in zip(expected, got, strict=True):
        assert_array_equal(X1, X2)
        assert_array_equal(y1, y2)


def test_a_single_read_is_streamed_without_a_reader_thread():
    """A stream of one read (a whole-data pass over small data) produces it in the
    consumer's thread: the same batches as a threaded stream, data errors located alike,
    and no thread started (whose start, ~4.5 ms on a loaded machine, was most of a pass
    over 442 rows).
    """
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 3)), rng.standard_normal(300)
    src = ArraySource(X, y, chunk_rows=100)
    before = threading.active_count()

    def rows(**kw):
        with src.batches(batch_size=128, epochs=1, seed=1, **kw) as stream:
            inline = stream._thread is None
            got = [(b.rows.copy(), b.X.copy(), b.cursor) for b in stream]
        return inline, got

    inline, one_read = rows(chunks_per_read=3)
    assert inline and threading.active_count() == before
    threaded, reads = rows(chunks_per_read=2)
    assert not threaded
    assert sorted(np.concatenate([r for r, _, _ in one_read])) == list(range(300))
    for r, x, _ in one_read:
        assert_array_equal(x, X[r])
    assert one_read[-1][2] == Cursor(1, 0, 0, 300)
    bad = X.copy()
    bad[217, 1] = np.nan
    with pytest.raises(DataError, match="row 217"):
        for _ in ArraySource(bad, y, chunk_rows=100).batches(batch_size=128,
                                                            chunks_per_read=3):
            pass
