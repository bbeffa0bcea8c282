"""Follow mode: rows appended by another process are learned once each, in order; commits
come after the data; resume from a cursor; stores without the commit attribute.
"""

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zarr

from natgrad_stream.data import Cursor, FollowSource, append_rows
from natgrad_stream.errors import DataError
from tests.conftest import write_group

D = 3


def empty_store(path, chunk_rows=100):
    """An empty group with ``X`` (float64, column 0 = row id) and ``y`` (uint8)."""
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("X", shape=(0, D), chunks=(chunk_rows, D), dtype="float64")
    g.create_array("y", shape=(0,), chunks=(chunk_rows,), dtype="uint8")
    g.attrs["natgrad_stream"] = {"task": "logistic"}
    return path


def rows(a, b):
    X = np.zeros((b - a, D))
    X[:, 0] = np.arange(a, b)
    X[:, 1] = 1.0
    return X, (np.arange(a, b) % 2).astype(np.uint8)


def append(path, a, b):
    X, y = rows(a, b)
    return append_rows(path, X=X, y=y)


def committed(path):
    return zarr.open_group(str(path), mode="r").attrs["natgrad_stream"].get("committed_rows")


def consume(source, *, limit=None, batch_size=128, **kw):
    """(row ids from X, rows, batches' sizes, last cursor); stops after ``limit`` rows."""
    ids, got, sizes, cursor = [], [], [], kw.get("start")
    with source.batches(batch_size=batch_size, **kw) as stream:
        for batch in stream:
            ids.append(batch.X[:, 0].astype(np.int64))
            got.append(batch.rows)
            sizes.append(len(batch.rows))
            assert np.all(batch.y == ids[-1] % 2)
            cursor = batch.cursor
            if limit is not None and sum(sizes) >= limit:
                break
    def cat(parts):
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    return cat(ids), cat(got), sizes, cursor


def test_concurrent_writer_every_row_once_in_order_and_resume_midstream(tmp_path):
    path = empty_store(tmp_path / "grow.zarr")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, numpy as np
        from natgrad_stream.data.follow import append_rows
        for i in range(20):
            a = 300 * i
            X = np.zeros((300, {D})); X[:, 0] = np.arange(a, a + 300); X[:, 1] = 1.0
            append_rows({str(path)!r}, X=X, y=(np.arange(a, a + 300) % 2).astype(np.uint8))
            time.sleep(0.02)
        """)])
    try:
        deadline = time.monotonic() + 30  # the idle timeout starts once the writer is up
        while committed(path) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        src = FollowSource(path, poll_seconds=0.02, idle_timeout=1.0)
        assert src.n_rows is None and src.has_targets and src.n_features == D
        ids1, rows1, _, cur = consume(src, limit=1500, batch_size=256)
        assert cur.epoch == 0 and cur.row == len(ids1) == cur.samples
        # a new stream (as after a checkpoint) from the mid-stream cursor
        ids2, rows2, _, end = consume(FollowSource(path, poll_seconds=0.02, idle_timeout=1.0),
                                      batch_size=256, start=cur)
    finally:
        assert writer.wait(timeout=30) == 0
    ids = np.concatenate([ids1, ids2])
    np.testing.assert_array_equal(ids, np.arange(6000))  # each row once, in arrival order
    np.testing.assert_array_equal(np.concatenate([rows1, rows2]), ids)
    assert end == Cursor(0, 0, 6000, 6000)
    assert committed(path) == 6000


def test_resume_from_any_cursor_delivers_exactly_the_rest(tmp_path):
    path = empty_store(tmp_path / "s.zarr")
    for a, b in ((0, 130), (130, 555), (555, 1000)):
        append(path, a, b)
    src = FollowSource(path, poll_seconds=0.01, idle_timeout=0.15)
    ids, _, sizes, end = consume(src, batch_size=96)
    np.testing.assert_array_equal(ids, np.arange(1000))
    assert end == Cursor(0, 0, 1000, 1000) and max(sizes) == 96
    for stop_after in (96, 480, 960):
        first, _, _, cur = consume(src, batch_size=96, limit=stop_after)
        rest, _, _, end = consume(src, batch_size=96, start=cur)
        np.testing.assert_array_equal(np.concatenate([first, rest]), np.arange(1000))
        assert end.samples == 1000
    append(path, 1000, 1100)  # a later run continues where the last one ended
    more, _, _, _ = consume(src, batch_size=96, start=end)
    np.testing.assert_array_equal(more, np.arange(1000, 1100))


def test_append_commits_only_after_every_row_is_written(tmp_path, monkeypatch):
    path = empty_store(tmp_path / "c.zarr")
    assert append(path, 0, 500) == 500 and committed(path) == 500
    real = zarr.Array.__setitem__

    def fail_on_y(self, key, value):
        if self.shape[0] > 500 and self.ndim == 1:  # X written, y fails
            raise OSError("disk full")
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", fail_on_y)
    with pytest.raises(OSError, match="disk full"):
        append(path, 500, 700)
    monkeypatch.undo()
    g = zarr.open_group(str(path), mode="r")
    assert g["X"].shape[0] == 700 and committed(path) == 500  # resized, written, not committed
    assert g.attrs["natgrad_stream"]["task"] == "logistic"  # other attributes kept
    ids, _, _, _ = consume(FollowSource(path, poll_seconds=0.01, idle_timeout=0.1))
    np.testing.assert_array_equal(ids, np.arange(500))
    # the next append starts from the committed count and overwrites the uncommitted rows
    assert append(path, 500, 650) == 650
    assert zarr.open_group(str(path), mode="r")["X"].shape[0] == 650
    ids, _, _, _ = consume(FollowSource(path, poll_seconds=0.01, idle_timeout=0.1))
    np.testing.assert_array_equal(ids, np.arange(650))


def test_append_rejects_mismatched_rows(tmp_path):
    path = empty_store(tmp_path / "m.zarr")
    X, y = rows(0, 10)
    with pytest.raises(DataError, match="differ in number"):
        append_rows(path, X=X, y=y[:5])
    with pytest.raises(DataError, match="not found"):
        append_rows(path, X=X, z=y)
    with pytest.raises(DataError, match="shape"):
        append_rows(path, X=X[:, :2], y=y)
    assert committed(path) is None


def test_store_without_commit_attribute_reads_common_length_and_stored_chunks(tmp_path):
    X, y = rows(0, 450)
    path = write_group(tmp_path / "plain.zarr", X=X, y=y)  # 100-row chunks, no attribute
    ids, _, _, _ = consume(FollowSource(path, poll_seconds=0.01, idle_timeout=0.1))
    np.testing.assert_array_equal(ids, np.arange(450))

    g = zarr.open_group(str(tmp_path / "gaps.zarr"), mode="w", zarr_format=3)
    gx = g.create_array("X", shape=(450, D), chunks=(100, D), dtype="float64")
    gy = g.create_array("y", shape=(450,), chunks=(100,), dtype="uint8")
    gx[:300], gy[:300] = X[:300], y[:300]  # chunks 0-2 stored; 3, 4 missing
    src = FollowSource(tmp_path / "gaps.zarr", poll_seconds=0.01, idle_timeout=0.1)
    ids, _, _, cur = consume(src)
    np.testing.assert_array_equal(ids, np.arange(300))  # not into the missing chunk 3
    gx[300:], gy[300:] = X[300:], y[300:]
    rest, _, _, _ = consume(src, start=cur)
    np.testing.assert_array_equal(rest, np.arange(300, 450))


def test_short_batch_is_delivered_after_a_quiet_poll(tmp_path):
    path = empty_store(tmp_path / "p.zarr")
    append(path, 0, 250)
    deadline = time.monotonic() + 5
    src = FollowSource(path, poll_seconds=0.05, idle_timeout=None,
                       should_stop=lambda: time.monotonic() > deadline)
    sizes = []
    with src.batches(batch_size=100) as stream:
        for batch in stream:
            sizes.append(len(batch.rows))
            if sum(sizes) == 250:
                src.stop()  # while the stream waits for rows
    assert sizes == [100, 100, 50] and time.monotonic() < deadline


def test_stop_wakes_a_waiting_stream(tmp_path):
    path = empty_store(tmp_path / "w.zarr")
    src = FollowSource(path, poll_seconds=30.0, idle_timeout=None)
    threading.Timer(0.2, src.stop).start()
    t0 = time.monotonic()
    assert consume(src)[2] == []
    assert time.monotonic() - t0 < 2


def test_bad_values_are_located_by_array_chunk_and_row(tmp_path):
    path = empty_store(tmp_path / "bad.zarr")
    X, y = rows(0, 400)
    X[123, 2] = np.nan
    append_rows(path, X=X, y=y)
    src = FollowSource(path, poll_seconds=0.01, idle_timeout=0.1)
    with pytest.raises(DataError) as err:
        consume(src)
    assert (err.value.array, err.value.chunk, err.value.row, err.value.column) == \
        ("X", 1, 123, 2)
    X[123, 2] = 0.0
    y[250] = 7
    path = empty_store(tmp_path / "label.zarr")
    append_rows(path, X=X, y=y)

    def binary(name, block):
        bad = np.flatnonzero((block != 0) & (block != 1))
        return (int(bad[0]), "label is not 0/1") if bad.size else None

    with pytest.raises(DataError, match="label is not 0/1") as err:
        consume(FollowSource(path, poll_seconds=0.01, idle_timeout=0.1), checks=[binary])
    assert (err.value.array, err.value.chunk, err.value.row) == ("y", 2, 250)


def test_shuffle_window_delivers_each_row_once_and_resumes_inside_a_window(tmp_path):
    path = empty_store(tmp_path / "win.zarr")
    append(path, 0, 1000)
    src = FollowSource(path, poll_seconds=0.01, idle_timeout=0.15, shuffle_window=256)
    ids, got, _, end = consume(src, batch_size=100, seed=4)
    np.testing.assert_array_equal(ids, got)
    assert end == Cursor(0, 0, 1000, 1000)
    for w in range(3):  # full windows: shuffled within the window
        part = ids[256 * w:256 * (w + 1)]
        np.testing.assert_array_equal(np.sort(part), np.arange(256 * w, 256 * (w + 1)))
        assert not np.array_equal(part, np.sort(part))
    np.testing.assert_array_equal(ids[768:], np.arange(768, 1000))  # the tail, at the end
    first, _, _, cur = consume(src, batch_size=100, seed=4, limit=400)
    assert cur == Cursor(0, 200, 256, 456)  # batches of 100, 100, 56 | 100, 100 (window 1)
    rest, _, _, _ = consume(src, batch_size=100, seed=4, start=cur)
    np.testing.assert_array_equal(np.concatenate([first, rest]), ids)
    with pytest.raises(ValueError, match="shuffled window"):
        FollowSource(path, idle_timeout=0.1).batches(batch_size=100, start=cur)


def test_learner_follows_a_growing_store(tmp_path):
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    path = empty_store(tmp_path / "fit.zarr")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, D))
    y = (rng.random(2000) < 1 / (1 + np.exp(-X[:, 0]))).astype(np.uint8)
    append_rows(path, X=X[:1200], y=y[:1200])
    learner = NaturalGradientLearner(make_model("logistic", D), batch_size=256)
    learner.fit(FollowSource(path, poll_seconds=0.01, idle_timeout=0.2))
    assert learner.samples == 1200 and learner.cursor == Cursor(0, 0, 1200, 1200)
    append_rows(path, X=X[1200:], y=y[1200:])
    learner.fit(FollowSource(path, poll_seconds=0.01, idle_timeout=0.2))
    assert learner.samples == 2000 and learner.cursor.row == 2000
    with pytest.raises(ValueError, match="epochs must be 1"):
        learner.fit(FollowSource(path, idle_timeout=0.1), epochs=2)


def test_first_append_to_a_plain_store_commits_its_length_before_growing(tmp_path,
                                                                         monkeypatch):
    X, y = rows(0, 250)  # ends inside chunk 2
    path = write_group(tmp_path / "plain.zarr", X=X, y=y)
    g = zarr.open_group(str(path), mode="r+")
    g["X"].resize((200, D))  # make every array end where the others do
    g["X"].resize((250, D))
    g["X"][200:] = X[200:]
    seen = []
    real = zarr.Array.resize

    def spy(self, shape):
        seen.append(committed(path))
        return real(self, shape)

    monkeypatch.setattr(zarr.Array, "resize", spy)
    assert append(path, 250, 300) == 300
    assert seen == [250, 250]  # readers already went by the attribute when arrays grew


def test_a_committed_chunk_missing_from_the_store_is_an_error(tmp_path):
    path = empty_store(tmp_path / "lost.zarr")
    append(path, 0, 300)
    (path / "X" / "c" / "1" / "0").unlink()
    with pytest.raises(DataError, match="missing") as err:
        consume(FollowSource(path, poll_seconds=0.01, idle_timeout=0.1))
    assert (err.value.array, err.value.chunk, err.value.row) == ("X", 1, 100)
