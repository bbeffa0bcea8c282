"""A refresh of a full metric holds a fixed number of P × P arrays, and a wide one's stream
holds one read ahead (issue 18: beyond the read buffers, peak memory is the model's own
state). The arrays are counted with tracemalloc, which sees
every buffer NumPy allocates, and so those of SciPy's LAPACK wrappers (a copy of the input,
the eigenvectors, the workspace); P is large enough that tiles of 256 rows and (P,)
vectors stay a small fraction of one P × P array.
"""

import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose

from natgrad_stream.geometry.whitening import whiten
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model

P = 801


def _peak_in_square_arrays(fn) -> float:
    """The most memory ``fn()`` held at once beyond what was allocated before it, in
    P × P float64 arrays.
    """
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - before) / (P * P * 8)


def _metric(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2 * P, P)) * np.geomspace(1, 100, P)
    return A.T @ A / (2 * P)


def test_eigh_whitening_in_place_holds_the_eigenvectors_only():
    from natgrad_stream._constants import DEFAULT_DAMPING

    G = _metric()
    want = G + DEFAULT_DAMPING * np.diag(np.diag(G))  # (scaled: the mean eigenvalue is 1)
    out = []
    # LAPACK factors G's memory in place, and the whitener is its eigenpairs: V is the
    # only new P × P array (W⁻¹ beside it, and W written over G, made it 2 at 4569ade)
    held = _peak_in_square_arrays(lambda: out.append(whiten(G, overwrite=True)))
    assert held < 1.5, f"{held:.2f} P × P arrays"
    new = out[0]
    kept = sum(a.nbytes for a in new.state_dict().values() if isinstance(a, np.ndarray))
    assert kept < 1.1 * P * P * 8, f"the whitener keeps {kept / (P * P * 8):.2f} P × P arrays"
    W = new.matrix
    assert_allclose(W.T @ W, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert_allclose(W, W.T * np.diag(want)[None, :] ** 0.5 / np.diag(want)[:, None] ** 0.5,
                    rtol=1e-8, atol=1e-10 * np.abs(W).max())  # a scaled symmetric root
    theta = np.random.default_rng(5).standard_normal(P)
    assert_allclose(new.theta(new.phi(theta)), theta, rtol=1e-9, atol=1e-9)
    assert_allclose(new.grad_phi(theta), np.linalg.solve(W.T, theta), rtol=1e-8, atol=1e-10)


def _learner(optimizer):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2048, P - 1)) * np.geomspace(1, 10, P - 1)
    y = (rng.random(2048) < 0.5).astype(float)
    lr = NaturalGradientLearner(make_model("logistic", P - 1), structure="full",
                                optimizer=optimizer, seed=0)
    lr.step(X[:1024], y[:1024])
    lr.step(X[1024:], y[1024:])
    return lr


@pytest.mark.parametrize("optimizer, most", [("sgd", 2.5), ("momentum", 3.5), ("adam", 3.5)])
def test_a_refresh_builds_only_the_transport_maps_its_optimizer_needs(optimizer, most):
    # the running estimate (factored in place) and the eigenvectors; plain SGD's state is
    # coordinate-free (no map), momentum's velocity needs W_new W_old⁻¹ only, built from
    # W_old⁻¹ in its own memory (both maps, built whatever the optimizer, made it 4; W
    # and W⁻¹ formed by the refresh made it 3 for SGD and 4 for adam at 4569ade)
    lr = _learner(optimizer)
    events = []
    held = _peak_in_square_arrays(lambda: events.append(lr.refresh()))
    assert events[0]["ok"]
    assert held < most, f"{held:.2f} P × P arrays"


@pytest.mark.parametrize("features, structure, ahead", [
    (2047, "full", -1), (2047, "diagonal", 2), (2046, "full", 2)])
def test_a_wide_full_metric_reads_into_one_buffer(features, structure, ahead):
    # its O(P²) work a row dwarfs the decoding: one read buffer, the next read decoded
    # once the last is consumed (P = 2,048 parameters from WIDE_METRIC_PARAMS on; at
    # 4569ade it held 3 buffers)
    from natgrad_stream.training.learner import reads_ahead

    lr = NaturalGradientLearner(make_model("logistic", features), structure=structure)
    assert reads_ahead(lr, 2) == ahead
    assert reads_ahead(lr, 1) == min(ahead, 1)


@pytest.mark.parametrize("prefetch", [0, -1])
def test_a_stream_with_fewer_buffers_keeps_the_order(tmp_path, prefetch):
    # prefetch 0 and -1: the same batches in the same order as prefetch 2, from two read
    # buffers (the reader one read ahead of the consumer) or one, instead of four
    import zarr

    from natgrad_stream.data import as_source

    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((5000, 7)), (rng.random(5000) < 0.5).astype(float)
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("X", data=X, chunks=(500, 7))
    g.create_array("y", data=y, chunks=(500,))
    src = as_source(str(tmp_path / "d.zarr"))
    seen = {}
    for p in (prefetch, 2):
        with src.batches(batch_size=256, epochs=2, seed=4, prefetch=p) as stream:
            seen[p] = [(b.X.copy(), b.y.copy()) for b in stream]
    assert len(seen[prefetch]) == len(seen[2]) > 10
    for (a, ya), (b, yb) in zip(seen[prefetch], seen[2], strict=True):
        assert np.array_equal(a, b) and np.array_equal(ya, yb)
    buffers = [src.plan_bytes(2, p, 256, True) for p in (prefetch, prefetch + 1, 2)]
    assert (buffers[2] - buffers[0]) / (2 - prefetch) == buffers[1] - buffers[0] > 1000 * 7 * 8
    plan = src.read_plan(prefetch=prefetch, batch_size=256, read_buffer_bytes=1 << 30)
    assert plan.prefetch == prefetch


def test_a_metric_pass_sums_in_place():
    # one P × P sum for the whole pass, divided in place (a copy a batch, and the
    # estimate's, made it 2)
    from natgrad_stream.data import as_source
    from natgrad_stream.training.learner import full_pass

    rng = np.random.default_rng(2)
    X = rng.standard_normal((3 * 1024, P - 1))
    y = (rng.random(3 * 1024) < 0.5).astype(float)
    lr = NaturalGradientLearner(make_model("logistic", P - 1), structure="full", seed=0)
    lr.step(X[:1024], y[:1024])
    source = as_source((X, y))
    out = []
    # beyond a pass without the metric (the same read buffers)
    reads = _peak_in_square_arrays(lambda: full_pass(lr, source, lr.state.theta, metric=None,
                                                     batch_rows=1024))
    held = _peak_in_square_arrays(lambda: out.append(
        full_pass(lr, source, lr.state.theta, metric=lr.metric, batch_rows=1024))) - reads
    assert held < 1.5, f"{held:.2f} P × P arrays"
    G = out[0][2]
    ref = lr.model.new_workspace("full")
    lr.model.accumulate(X, y, None, lr.state.theta, metric=lr.metric, structure="full",
                        ws=ref)
    assert_allclose(G, ref.fisher / len(X), rtol=1e-10, atol=1e-14)


def test_shrinkage_makes_no_square_array_of_its_own():
    # the Schur complement is read a tile at a time (at 4569ade it was a P × P array:
    # the drift check and the refresh's shrinkage then held two beside the estimate)
    from natgrad_stream.geometry.shrinkage import oas_intensity, schur_complement, shrink

    rng = np.random.default_rng(3)
    A = rng.standard_normal((P, P)) * np.geomspace(1, 100, P) + 5.0
    A[:, -1] = 1.0  # an intercept, with features not centred
    G = A.T @ A / P
    rows = 0.5 * P
    Gc = schur_complement(G, [P - 1])  # the reference, whole
    d = np.diag(Gc).copy()
    r = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    rho = oas_intensity((Gc * r[:, None] * r[None, :])[:P - 1, :P - 1], rows)
    rho *= 1.0 - rows / (5.0 * P)
    ref = G - rho * (Gc - np.diag(d))
    out = []
    held = _peak_in_square_arrays(lambda: out.append(shrink(G, rows, centers=[P - 1],
                                                            overwrite=True)))
    # (a tile of 256 rows, 0.32 of a P × P array here, and square tiles)
    assert held < 1.0, f"{held:.2f} P × P arrays"
    G_rho, got = out[0]
    assert G_rho is G and 0 < got < 1
    assert got == pytest.approx(rho, rel=1e-12)
    assert_allclose(G_rho, ref, rtol=1e-12, atol=1e-13 * np.abs(ref).max())


def test_a_fit_through_eigenpairs_equals_one_through_dense_whiteners(monkeypatch):
    # the eigenpairs apply W and W⁻¹ as two products with V where the dense matrices took
    # one: the same steps up to round-off (each product's relative error is about
    # P·ε·cond(W); the losses agree to 1e-10 over a pass with refreshes and drift checks)
    import natgrad_stream.training.learner as learner_module
    from natgrad_stream.geometry.whitening import EigenWhitener, Whitener

    rng = np.random.default_rng(6)
    d = 120
    X = rng.standard_normal((40 * 256, d)) * np.geomspace(1, 30, d) + 0.5
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-X @ (rng.standard_normal(d) / 30)))) * 1.0

    def losses(dense):
        if dense:
            def dense_whiten(*args, **kw):
                w = whiten(*args, **kw)
                return Whitener(w.matrix, w.inverse, w.diagnostics) \
                    if isinstance(w, EigenWhitener) else w
            monkeypatch.setattr(learner_module, "whiten", dense_whiten)
        lr = NaturalGradientLearner(make_model("logistic", d), structure="full", seed=0)
        out = [lr.step(X[i:i + 256], y[i:i + 256]).loss for i in range(0, len(X), 256)]
        assert isinstance(lr.state.whitener, Whitener if dense else EigenWhitener)
        assert lr.state.rewhitens >= 5
        return np.array(out), lr.theta

    (a, ta), (b, tb) = losses(False), losses(True)
    assert_allclose(a, b, rtol=1e-10)
    assert_allclose(ta, tb, rtol=1e-7, atol=1e-9 * np.abs(tb).max())


def test_a_sparse_stream_asked_for_one_buffer_keeps_two():
    # a shuffled sparse read waits in its buffer until the next one is staged: with one
    # buffer the reader would wait for itself
    import scipy.sparse

    from natgrad_stream.data.sparse_source import SparseSource

    X = scipy.sparse.random(3000, 20, density=0.2, format="csr", random_state=7)
    y = (np.arange(3000) % 2).astype(float)
    src = SparseSource(X, y, chunk_rows=250)
    seen = {}
    for p in (-1, 2):
        with src.batches(batch_size=200, epochs=1, seed=4, prefetch=p) as stream:
            seen[p] = [b.y.copy() for b in stream]
    assert len(seen[-1]) == len(seen[2]) > 10
    assert all(np.array_equal(a, b) for a, b in zip(seen[-1], seen[2], strict=True))


@pytest.mark.parametrize("metric, ahead", [(True, -1), (False, 0)])
def test_fewer_buffers_keep_the_reads_of_the_requested_plan(tmp_path, metric, ahead):
    # one or two buffers would let reads of more chunks fit the budget: they are not
    # taken, so a pass's batches (and a shuffled epoch's order) stay those of the plan
    # with the buffers requested
    import zarr

    from natgrad_stream.data import as_source
    from natgrad_stream.training.learner import stream_plan

    g = zarr.open_group(str(tmp_path / "w.zarr"), mode="w")
    g.create_array("X", data=np.zeros((4096, 2047), dtype=np.float32), chunks=(256, 2047))
    g.create_array("y", data=np.zeros(4096), chunks=(256,))
    src = as_source(str(tmp_path / "w.zarr"))
    budget = src.plan_bytes(3, 2, 1024, False)  # 4 buffers of 3 chunks
    lr = NaturalGradientLearner(make_model("logistic", 2047), structure="full",
                                read_buffer_bytes=budget)
    want = src.read_plan(chunks_per_read=8, prefetch=2, batch_size=1024, shuffle=False,
                         read_buffer_bytes=budget)
    assert want.chunks_per_read == 3
    assert src.read_plan(chunks_per_read=8, prefetch=ahead, batch_size=1024, shuffle=False,
                         read_buffer_bytes=budget).chunks_per_read > 3
    got = stream_plan(lr, src, prefetch=2, chunks_per_read=8, batch_size=1024,
                      shuffle=False, metric=metric)
    assert got == {"prefetch": ahead, "chunks_per_read": 3}


def _folding_refresh_step(monkeypatch, spill_from):
    # the second batch folds into the metric (a new sum: the step's undo point keeps the
    # old one) and the schedule refreshes at 2,048 rows
    import natgrad_stream.training.learner as learner_module

    monkeypatch.setattr(learner_module, "SPILL_METRIC_PARAMS", spill_from)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2048, P - 1)) * np.geomspace(1, 10, P - 1)
    y = (rng.random(2048) < 0.5).astype(float)
    at_factoring = []  # what the step holds when the refresh factors the estimate

    def spy(G, **kw):
        at_factoring.append(tracemalloc.get_traced_memory()[0])
        return whiten(G, **kw)

    tracemalloc.start()  # (before the old sum exists: its release is then seen)
    try:
        lr = NaturalGradientLearner(make_model("logistic", P - 1), structure="full", seed=0)
        lr.step(X[:1024], y[:1024])
        monkeypatch.setattr(learner_module, "whiten", spy)
        before = tracemalloc.get_traced_memory()[0]
        info = lr.step(X[1024:], y[1024:])
    finally:
        tracemalloc.stop()
    assert info.refresh["ok"] and len(at_factoring) == 1
    return (at_factoring[0] - before) / (P * P * 8), lr


def test_a_refresh_keeps_the_undo_points_older_metric_in_a_file(monkeypatch):
    # the older sum goes to a temporary file while the refresh runs (at 4569ade it stayed
    # in memory: the new sum, the old one, the whitener in use, the estimate and its
    # eigenvectors at once)
    kept, a = _folding_refresh_step(monkeypatch, 10**9)
    spilled, b = _folding_refresh_step(monkeypatch, 0)
    # beyond what was held before the step: the new sum and the estimate, and without
    # the file the old sum (held before the step, its memory freed now)
    assert kept - spilled > 0.9, f"{kept:.2f} against {spilled:.2f} P × P arrays"
    assert np.array_equal(a.theta, b.theta)


def test_a_step_rejected_after_a_spill_puts_the_metric_back(monkeypatch):
    import natgrad_stream.training.learner as learner_module
    from natgrad_stream.errors import NumericalError

    monkeypatch.setattr(learner_module, "SPILL_METRIC_PARAMS", 0)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2048, P - 1)) * np.geomspace(1, 10, P - 1)
    y = (rng.random(2048) < 0.5).astype(float)
    lr = NaturalGradientLearner(make_model("logistic", P - 1), structure="full", seed=0)
    lr.step(X[:1024], y[:1024])
    before = lr.state.fisher.sum.copy()
    snap = lr.state.snapshot()

    def reject(theta):
        raise ValueError("rejected")

    monkeypatch.setattr(lr.model, "check_params", reject)
    with pytest.raises(NumericalError):
        lr.step(X[1024:], y[1024:])  # folds, spills the old sum, refreshes, is rejected
    assert np.array_equal(lr.state.fisher.sum, before)
    assert lr.state.samples == 1024 and lr.state.rewhitens == 1
    monkeypatch.undo()
    lr.step(X[1024:], y[1024:])
    snap.spill(lr.state, {})  # a rollback point's older sum, moved and read back
    assert isinstance(snap._saved, list)
    assert np.array_equal(snap.restore().fisher.sum, before)
    assert np.array_equal(snap.restore().fisher.sum, before)  # (restored again)


def test_a_checkpoint_of_the_state_copies_no_metric_sum():
    # the running sum is written from its own memory (a copy for the state and one for
    # each rollback point made the end of a one-pass fit at d = 3,000 its peak)
    lr = _learner("sgd")
    lr._last_good = lr._window_start = lr.state.snapshot()
    state = lr.state_dict()
    for part in (state, state["guard_rollback_point"], state["guard_window_start"]):
        assert np.shares_memory(part["fisher"]["sum"], lr.state.fisher.sum)


def test_a_temporary_directory_that_cannot_take_the_spill_keeps_the_metric_in_memory(
        monkeypatch):
    # a full (or read-only, or missing) TMPDIR: the spill is skipped, the step and the
    # result are those of a run that never spills (it used to raise out of the step)
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    _, a = _folding_refresh_step(monkeypatch, 10**9)
    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    _, b = _folding_refresh_step(monkeypatch, 0)
    assert np.array_equal(a.theta, b.theta)
    assert np.array_equal(a.state.fisher.sum, b.state.fisher.sum)
