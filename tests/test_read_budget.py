"""Read buffers sized by a byte budget (``read_buffer_bytes``, issue 18): the bytes a stream
allocates do not grow with the number of features; the order of the rows is unchanged
while the budget does not bind, and resumes exactly when it does; one chunk larger than
the budget is still read; follow mode's order never depends on it.
"""

import logging
import tracemalloc

import numpy as np
import pytest

from natgrad_stream.data import ArraySource, Cursor, FollowSource, append_rows
from natgrad_stream.data.budget import plan_reads
from natgrad_stream.training import options as opts


class Constant:
    """A read-only ``(n, d)`` array-like whose slices are broadcast views (no memory), so a
    test can stream a wide array of many rows and measure only the stream's own buffers.
    """

    def __init__(self, n, d, dtype=np.float32, value=1.0):
        self.shape, self.dtype = ((n, d) if d else (n,)), np.dtype(dtype)
        self._row = np.full(d if d else 1, value, dtype=self.dtype)

    def __getitem__(self, key):
        start, stop, _ = key.indices(self.shape[0])
        shape = (stop - start,) + self.shape[1:]
        return np.broadcast_to(self._row if len(self.shape) == 2 else self._row[0], shape)


def allocated_by_stream(source, batches=3, **kw) -> int:
    """Peak bytes allocated (tracemalloc) while a stream of ``source`` is opened and read,
    after a first stream of a small source (imports and compiled kernels load once).
    """
    with wide(3, n=1000).batches(batch_size=10) as warm:
        next(iter(warm))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with source.batches(**kw) as stream:
            for _, _ in zip(range(batches), stream, strict=False):
                pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def wide(d, n=1 << 20, chunk_rows=256):
    return ArraySource(Constant(n, d), Constant(n, 0, np.float64, 0.0), chunk_rows=chunk_rows)


def test_stream_bytes_do_not_grow_with_the_features():
    """Same budget, same rows per chunk: the buffers at d = 3,000 and d = 300 are equal to
    within one step of the plan (``prefetch + 2`` chunks at d = 3,000), both within the
    budget; in rows (``read_buffer_bytes=None``, the earlier sizing) they grow 10×.
    """
    budget = 64 << 20
    kw = dict(batch_size=512, chunks_per_read=256, prefetch=2, seed=1)
    got = {d: allocated_by_stream(wide(d), read_buffer_bytes=budget, **kw) for d in (300, 3000)}
    chunk_3000 = 256 * (3000 * 4 + 16)
    assert max(got.values()) <= budget * 1.02  # + the stream's small objects
    assert abs(got[3000] - got[300]) <= 4 * chunk_3000, got
    rows = {d: wide(d).plan_bytes(2, 2, 512, True) for d in (300, 3000)}
    assert rows[3000] / rows[300] > 9


@pytest.mark.parametrize("d", [300, 3000])
def test_the_plan_is_measured(d):
    """The plan's bytes are what the stream allocates (within 2%)."""
    src = wide(d)
    plan = src.read_plan(chunks_per_read=256, batch_size=512, read_buffer_bytes=64 << 20)
    got = allocated_by_stream(src, batch_size=512, chunks_per_read=256,
                              read_buffer_bytes=64 << 20)
    assert plan.nbytes <= got <= plan.nbytes * 1.02 + (1 << 20)


def test_plan_reads_lowers_prefetch_then_chunks():
    def cost(k, p):
        return (p + 2) * k * 10

    def plan(budget):
        got = plan_reads(cost, 2, 2, budget)
        return got.chunks_per_read, got.prefetch, got.nbytes, got.over_budget

    assert plan(None) == plan(80) == (2, 2, 80, False)
    assert plan(79) == (2, 1, 60, False)
    assert plan(59) == (1, 2, 40, False)
    assert plan(39) == (1, 1, 30, False)
    assert plan(29) == (1, 1, 30, True)


def numbered(n=5000, d=4, chunk_rows=100):
    """Arrays whose column 0 is the row id, read 100 rows per chunk."""
    X = np.zeros((n, d))
    X[:, 0] = np.arange(n)
    return ArraySource(X, (np.arange(n) % 2).astype(float), chunk_rows=chunk_rows)


def order(source, *, start=None, limit=None, **kw):
    """Row ids delivered (and the cursor after the last), two epochs, seed 5."""
    ids, cursor = [], start
    with source.batches(batch_size=64, epochs=2, seed=5, start=start, **kw) as stream:
        for batch in stream:
            assert np.array_equal(batch.X[:, 0], batch.rows)
            ids.append(batch.rows.copy())
            cursor = batch.cursor
            if limit is not None and sum(map(len, ids)) >= limit:
                break
    return np.concatenate(ids), cursor


def test_order_is_unchanged_while_the_budget_does_not_bind():
    src = numbered()
    rows_plan = order(src, read_buffer_bytes=None)[0]
    fits = src.plan_bytes(2, 2, 64, True)
    assert np.array_equal(order(src, read_buffer_bytes=fits)[0], rows_plan)
    # a budget that only lowers prefetch keeps the order too
    just_prefetch = src.plan_bytes(2, 1, 64, True)
    assert src.read_plan(batch_size=64, read_buffer_bytes=just_prefetch).prefetch == 1
    assert np.array_equal(order(src, read_buffer_bytes=just_prefetch)[0], rows_plan)
    # one that lowers the chunks per read changes it (rows shuffle within smaller reads):
    # the order of chunks_per_read=1
    one = src.plan_bytes(1, 2, 64, True)
    bound = order(src, read_buffer_bytes=one)[0]
    assert not np.array_equal(bound, rows_plan)
    assert np.array_equal(bound, order(src, chunks_per_read=1, read_buffer_bytes=None)[0])
    assert np.array_equal(np.sort(bound), np.sort(rows_plan))


@pytest.mark.parametrize("cut", [1, 333, 5000, 7777])
def test_resume_is_exact_when_the_budget_binds(cut):
    src = numbered()
    budget = src.plan_bytes(1, 1, 64, True)  # one chunk per read
    whole = order(src, read_buffer_bytes=budget)[0]
    head, cursor = order(src, limit=cut, read_buffer_bytes=budget)
    tail = order(src, start=cursor, read_buffer_bytes=budget)[0]
    assert cursor.samples == len(head)
    assert np.array_equal(np.concatenate([head, tail]), whole)


class Records(logging.Handler):
    """The records of the package's logger, read through a handler of its own (other tests
    configure the logger's propagation).
    """

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_chunk_larger_than_the_budget_is_read_alone():
    """One chunk per read and three buffers, over the budget, with one warning."""
    src = numbered(chunk_rows=1000)
    seen, logger = Records(), logging.getLogger("natgrad_stream")
    logger.addHandler(seen)
    try:
        plan = src.read_plan(batch_size=64, read_buffer_bytes=1000)
        ids = order(src, read_buffer_bytes=1000)[0]
        order(src, read_buffer_bytes=1000)
    finally:
        logger.removeHandler(seen)
    assert (plan.chunks_per_read, plan.prefetch, plan.over_budget) == (1, 1, True)
    assert np.array_equal(np.sort(ids), np.sort(np.r_[np.arange(5000), np.arange(5000)]))
    assert np.array_equal(ids, order(src, chunks_per_read=1, read_buffer_bytes=None)[0])
    warned = [m for m in seen.messages if "too large for read_buffer_bytes" in m]
    assert len(warned) == 1


def test_follow_order_does_not_depend_on_the_budget(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=3)
    g.create_array("X", shape=(0, 3), chunks=(100, 3), dtype="float64")
    g.create_array("y", shape=(0,), chunks=(100,), dtype="uint8")
    X = np.zeros((2345, 3))
    X[:, 0] = np.arange(2345)
    append_rows(tmp_path / "f.zarr", X=X, y=(np.arange(2345) % 2).astype(np.uint8))

    def follow(budget, window):
        src = FollowSource(tmp_path / "f.zarr", idle_timeout=0.2, poll_seconds=0.05,
                           shuffle_window=window)
        with src.batches(batch_size=64, seed=3, start=Cursor(), chunks_per_read=8,
                         read_buffer_bytes=budget) as stream:
            return np.concatenate([b.rows for b in stream])

    for window in (None, 500):
        plain = follow(None, window)
        assert np.array_equal(follow(4000, window), plain)  # over budget: one chunk a read
        assert np.array_equal(np.sort(plain), np.arange(2345))


def test_the_option_reads_byte_sizes_and_is_recorded():
    assert opts.byte_size("b", "256M") == 256 << 20
    assert opts.byte_size("b", "1G") == 1 << 30
    assert opts.byte_size("b", "1.5GiB") == 3 << 29
    assert opts.byte_size("b", "none") is None
    for bad in ("1X", "0", "-5M", "lots"):
        with pytest.raises(opts.OptionError):
            opts.byte_size("b", bad)
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    lr = NaturalGradientLearner(make_model("logistic", 3), read_buffer_bytes="1M")
    assert lr.read_buffer_bytes == 1 << 20
    assert lr.options()["read_buffer_bytes"] == 1 << 20
    assert opts.upgrade_recorded({"optimizer": "sgd"})["read_buffer_bytes"] is None
    assert opts.upgrade_recorded({"read_buffer_bytes": 5})["read_buffer_bytes"] == 5
    assert not opts.BY_NAME["read_buffer_bytes"].resumable


def test_a_fit_reads_enough_chunks_to_fill_its_batches(tmp_path):
    """A streaming pass reads as many chunks as a batch needs, so a store in small chunks
    gives batches of ``batch_size`` rows as arrays do (batches never straddle reads; with
    2 chunks a read, a store in 100-row chunks gave batches of at most 200 rows). The read
    budget still binds.
    """
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model
    from natgrad_stream.training.events import Callback
    from natgrad_stream.training.learner import batch_filling_reads

    from .conftest import write_group

    rng = np.random.default_rng(0)
    X = rng.standard_normal((950, 3))
    y = (X @ [1.0, -1.0, 0.5] + rng.standard_normal(950) > 0).astype(float)
    store = write_group(tmp_path / "d.zarr", X=X, y=y)  # 100-row chunks

    class Rows(Callback):
        def __init__(self):
            self.rows = []

        def on_batch_end(self, learner, info, cursor):
            self.rows.append(learner.samples)

    def batch_rows(data, **kw):
        got = Rows()
        NaturalGradientLearner(make_model("logistic", 3), batch_size=400, **kw).fit(
            data, epochs=1, callbacks=[got])
        return np.diff([0, *got.rows]).tolist()

    from_store, from_arrays = batch_rows(str(store)), batch_rows((X, y))
    assert max(from_store) == 400 and sum(from_store) == 950
    assert from_arrays == [400, 400, 150]
    assert ArraySource(X, y, chunk_rows=100).chunk_rows == 100
    assert batch_filling_reads(ArraySource(X, y, chunk_rows=100), 400) == 4
    assert batch_filling_reads(ArraySource(X, y, chunk_rows=100), 100) == 2
    assert batch_filling_reads(ArraySource(X, y, chunk_rows=1000), 400) == 2
    # a budget of one chunk's buffers: reads of one chunk, batches of 100 rows
    assert max(batch_rows(str(store), read_buffer_bytes=10_000)) <= 100
