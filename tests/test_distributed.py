"""Dask scale-out on a LocalCluster of 2 worker processes: passes equal one process's,
placement does not matter, the streaming mode learns in one pass, a lost worker changes
nothing, and a killed driver or a lost scheduler resumes exactly.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from natgrad_stream.data import open_zarr  # noqa: E402
from natgrad_stream.data.datasets import make_dataset  # noqa: E402
from natgrad_stream.distributed import DaskBackend, DataSpec, tree_sum  # noqa: E402
from natgrad_stream.distributed.worker import block_stats  # noqa: E402
from natgrad_stream.learner import NaturalGradientLearner  # noqa: E402
from natgrad_stream.models import make_model  # noqa: E402
from natgrad_stream.training.callbacks import Callback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::ResourceWarning",
                                        "ignore::pytest.PytestUnraisableExceptionWarning")

D, ROWS, CHUNK = 6, 24_000, 2048


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("dask") / "data.zarr"
    make_dataset(path, task="logistic", rows=ROWS, features=D, chunk_rows=CHUNK,
                 test_rows=8192, seed=3)
    return path


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _learner(**kw):
    return NaturalGradientLearner(make_model("logistic", D), **kw)


def _rel(a, b):
    return abs(a - b) / abs(b)


# -- full-data modes equal one process -----------------------------------------------------
def test_lbfgs_on_the_cluster_equals_one_process(data, client):
    one = _learner(optimizer="lbfgs", lbfgs_rounds=2).fit(data)
    dask = _learner(optimizer="lbfgs", lbfgs_rounds=2).fit(data, client=client)
    assert _rel(dask.result.train_loss, one.result.train_loss) < 1e-9
    np.testing.assert_allclose(dask.theta, one.theta, rtol=1e-6, atol=1e-8)
    assert dask.result.evaluations == one.result.evaluations
    traffic = dask.dask_traffic
    assert traffic["tasks"] > 0 and traffic["bytes_of_results"] > 0


def test_the_converging_multi_pass_default_equals_one_process(data, client):
    kw = {"epochs": 12}
    one = _learner(tol=1e-12).fit(data, **kw)
    dask = _learner(tol=1e-12).fit(data, client=client, **kw)
    assert one.result.converged and dask.result.converged
    assert _rel(dask.result.train_loss, one.result.train_loss) < 1e-9


def test_a_scoring_pass_on_the_cluster_equals_the_single_process_pass(data, client):
    from natgrad_stream.training.learner import full_pass

    lr = _learner()
    lr.fit(data, epochs=1)
    source = open_zarr(data)
    theta = lr.theta.copy()
    J1, g1, G1, rows1 = full_pass(lr, source, theta, metric=lr.metric, batch_rows=65536)
    lr._backend = DaskBackend(client, DataSpec(str(data), chunk_rows=CHUNK, n_rows=ROWS),
                              lr.model)
    try:
        J2, g2, G2, rows2 = full_pass(lr, source, theta, metric=lr.metric, batch_rows=65536)
    finally:
        lr._backend = None
    assert rows1 == rows2 == ROWS
    assert _rel(J2, J1) < 1e-12
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(G2, G1, rtol=1e-10, atol=1e-14)


def test_pass_sums_do_not_depend_on_placement(data, client):
    model = make_model("logistic", D)
    spec = DataSpec(str(data), chunk_rows=CHUNK, n_rows=ROWS)
    backend = DaskBackend(client, spec, model)
    theta = np.linspace(-0.3, 0.3, model.n_params)
    runs = [backend.pass_stats(theta, metric="model", structure="full") for _ in range(3)]
    # the same tree computed in this process, block by block
    n_chunks = -(-ROWS // CHUNK)
    blocks = [block_stats(spec, model, np.arange(i, min(i + 4, n_chunks)), theta,
                          metric="model", structure="full") for i in range(0, n_chunks, 4)]
    here = tree_sum(blocks)
    for run in runs:
        assert run.loss == here.loss and run.weight == here.weight
        assert run.grad.tobytes() == here.grad.tobytes()
        assert run.metric.tobytes() == here.metric.tobytes()


# -- streaming: synchronous data-parallel steps ---------------------------------------------
def test_one_streaming_pass_on_the_cluster_reaches_the_optimum(data, client):
    from natgrad_stream.evaluate import evaluate

    def held_out(theta):
        return evaluate(make_model("logistic", D), theta, data, x="X_test",
                        y="y_test")["log_loss"]

    best = _learner(optimizer="lbfgs").fit(data)
    a = _learner(batch_size=256).fit(data, client=client, epochs=1)
    b = _learner(batch_size=256).fit(data, client=client, epochs=1)
    assert a.result.samples == ROWS and a.result.epochs == 1
    assert a.theta.tobytes() == b.theta.tobytes()  # reproducible
    # 2 lanes of 256 rows: one step per 512 rows
    assert a.result.steps == pytest.approx(ROWS / 512, abs=4)
    gap = held_out(a.theta) / held_out(best.theta) - 1
    assert gap < 0.005, gap


async def _exit_worker():
    os._exit(1)


class _KillWorkerAt(Callback):
    """Kill one worker process when the fit reaches step ``at`` (its nanny restarts it)."""

    def __init__(self, client, at):
        self.client, self.at, self.killed = client, at, None

    def on_batch_end(self, learner, info, cursor):
        if self.killed is None and info.steps >= self.at:
            victim = sorted(self.client.nthreads())[0]
            self.client.run(_exit_worker, workers=[victim], wait=False)
            self.killed = victim


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_a_worker_killed_mid_fit_changes_nothing(data, client, optimizer):
    kw = {"epochs": 2} if optimizer == "sgd" else {}
    opts = {"optimizer": optimizer, "batch_size": 512}
    ref = _learner(**opts).fit(data, client=client, **kw)
    killer = _KillWorkerAt(client, at=3)
    got = _learner(**opts).fit(data, client=client, callbacks=[killer], **kw)
    assert killer.killed is not None
    assert got.theta.tobytes() == ref.theta.tobytes()
    client.wait_for_workers(2, timeout=60)


# -- the command line: a killed driver resumes; a lost scheduler exits 2, resumably ----------
def _cli(*args):
    return [sys.executable, "-m", "natgrad_stream", *map(str, args)]


def _theta(run):
    return json.loads(subprocess.run(_cli("params", run), capture_output=True, text=True,
                                     check=True).stdout)


@pytest.mark.slow
def test_a_killed_driver_resumes_exactly(data, client, tmp_path, load_script):
    address = client.scheduler.address
    common = ["--model", "logistic", "--epochs", "2", "--batch-size", "256",
              "--dask", address, "--progress", "never"]
    ref = tmp_path / "ref"
    subprocess.run(_cli("fit", data, "--out", ref, *common), check=True,
                   capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("fit", data, "--out", run, *common,
                                 "--checkpoint-every", "3000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert load_script("kill_resume")._kill_at_next_checkpoint(proc, run / "checkpoint.npz")
    proc.stderr.close()
    done = subprocess.run(_cli("fit", data, "--out", run, "--resume", "--dask", address,
                               "--progress", "never"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _theta(run) == _theta(ref)


def _scheduler_and_worker(tmp_path):
    """A scheduler and one worker as separate processes; returns (address, procs)."""
    file = tmp_path / "scheduler.json"
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--no-dashboard", "--host", "127.0.0.1", "--port", "0",
                              "--scheduler-file", str(file)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(file.read_text())["address"]
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                               "--nthreads", "1", "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return address, [sched, worker]


@pytest.mark.slow
def test_a_lost_scheduler_exits_2_with_a_resumable_checkpoint(data, tmp_path):
    address, procs = _scheduler_and_worker(tmp_path)
    run = tmp_path / "run"
    common = ["--model", "logistic", "--epochs", "3", "--batch-size", "128",
              "--progress", "never"]
    try:
        proc = subprocess.Popen(_cli("fit", data, "--out", run, *common, "--dask", address,
                                     "--checkpoint-every", "2000"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run / "checkpoint.npz").exists()
        procs[0].send_signal(signal.SIGKILL)  # the scheduler goes away mid-fit
        out, err = proc.communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert proc.returncode == 2, err
    lines = [x for x in err.splitlines() if "error" in x]
    assert len(lines) == 1 and "Dask" in lines[0] and "Traceback" not in err
    # resumable: with a new cluster the run finishes as an uninterrupted one does
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        done = subprocess.run(_cli("fit", data, "--out", run, "--resume", "--dask",
                                   cluster.scheduler_address, "--progress", "never"),
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        ref = tmp_path / "ref"
        subprocess.run(_cli("fit", data, "--out", ref, *common, "--dask",
                            cluster.scheduler_address), check=True, capture_output=True)
    assert _theta(run) == _theta(ref)


def test_a_dask_fit_needs_a_store_path(client):
    X = np.zeros((10, D))
    with pytest.raises(TypeError, match="path or URL"):
        _learner().fit((X, np.zeros(10)), client=client)


def test_cli_refuses_follow_with_dask(data, tmp_path, capsys):
    from natgrad_stream.app.cli import main

    rc = main(["fit", str(data), "--model", "logistic", "--out", str(tmp_path / "r"),
               "--follow", "--dask-workers", "1", "--progress", "never"])
    assert rc == 2
    assert "--follow" in capsys.readouterr().err


def test_cli_summary_states_lanes_and_effective_batch(data, client, tmp_path, capsys):
    from natgrad_stream.app.cli import main

    rc = main(["fit", str(data), "--model", "logistic", "--out", str(tmp_path / "r"),
               "--batch-size", "1000", "--epochs", "1", "--dask", client.scheduler.address,
               "--progress", "never"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dask"]["lanes"] == 2 and summary["dask"]["effective_batch"] == 2000
    assert summary["samples"] == ROWS and summary["dask"]["bytes_of_results"] > 0


def test_a_run_stopped_mid_epoch_resumes_only_in_its_own_mode(data, client):
    from natgrad_stream.errors import OptionError

    lr = _learner(batch_size=512).fit(data, client=client, max_samples=5000)
    state = lr.state_dict()
    with pytest.raises(OptionError, match="resume it with --dask"):
        NaturalGradientLearner.from_state_dict(state).fit(data, max_samples=10_000)
    one = _learner(batch_size=512).fit(data, max_samples=5000)
    with pytest.raises(OptionError, match="resume it without --dask"):
        NaturalGradientLearner.from_state_dict(one.state_dict()).fit(data, client=client)
    # in its own mode it goes on, exactly as an uninterrupted run
    done = NaturalGradientLearner.from_state_dict(state).fit(data, client=client)
    ref = _learner(batch_size=512).fit(data, client=client)
    assert done.theta.tobytes() == ref.theta.tobytes()


def test_an_unreachable_scheduler_is_one_line_and_exit_2(data, tmp_path, capsys,
                                                         monkeypatch):
    from natgrad_stream.app.cli import main
    from natgrad_stream.distributed import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)
    rc = main(["fit", str(data), "--model", "logistic", "--out", str(tmp_path / "r"),
               "--dask", "tcp://127.0.0.1:9", "--progress", "never"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no Dask scheduler answers at tcp://127.0.0.1:9" in err
    assert not (tmp_path / "r").exists()


# -- review findings, each reproduced ------------------------------------------------------
def test_worker_workspaces_do_not_grow_with_unpickled_models(data):
    import pickle

    from natgrad_stream.distributed import worker

    model = make_model("logistic", D)
    spec = DataSpec(str(data), chunk_rows=CHUNK, n_rows=ROWS)
    for _ in range(8):  # every task unpickles its own model
        block_stats(spec, pickle.loads(pickle.dumps(model)), [0], np.zeros(D + 1),
                    metric="model", structure="full")
    assert len(worker._LOCAL.workspaces) == 1


def test_a_cluster_lost_in_the_curvature_probe_leaves_the_state_before_the_step():
    from natgrad_stream.errors import DistributedError

    lr = NaturalGradientLearner(make_model("logistic", 3), structure="diagonal")
    P = 4
    rng = np.random.default_rng(0)

    def lost(v):
        raise DistributedError("lost the Dask cluster at tcp://x (test)")

    before = lr.state_dict()
    with pytest.raises(DistributedError):  # the first step re-whitens, then probes
        lr.step_sums(7.0, 10.0, rng.standard_normal(P), np.ones(P) * 10, 10,
                     power_iteration=lost)
    after = lr.state_dict()
    assert after["counters"] == before["counters"] and lr.whitener is None


def test_a_replacing_run_saves_nothing_when_the_cluster_is_lost(tmp_path):
    from natgrad_stream.errors import DistributedError
    from natgrad_stream.training.callbacks import CheckpointEvery

    lr = _learner()
    err = DistributedError("lost")
    CheckpointEvery(tmp_path / "a.npz", on_cluster_loss=False).on_error(lr, err)
    assert not (tmp_path / "a.npz").exists()
    CheckpointEvery(tmp_path / "b.npz").on_error(lr, err)
    assert (tmp_path / "b.npz").exists()


def test_lanes_are_fixed_for_the_run_whatever_the_cluster_later(data, client):
    kw = {"refine": "stream", "batch_size": 512}
    ref = _learner(**kw).fit(data, client=client, epochs=2)
    first = _learner(**kw).fit(data, client=client, epochs=1)
    assert first.state.lane_count == 2
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as one, \
            distributed.Client(one, set_as_default=False) as small:
        done = NaturalGradientLearner.from_state_dict(first.state_dict()).fit(
            data, client=small, epochs=2)
    assert done.result.steps == ref.result.steps
    assert done.theta.tobytes() == ref.theta.tobytes()


def test_switching_modes_at_an_epoch_boundary_drops_the_lanes(data, client):
    kw = {"refine": "stream", "batch_size": 512}
    # stopped at the start of epoch 2 right after its lanes were dealt (a stop request or
    # a lost cluster during its first step leaves this state)
    from natgrad_stream.data import Cursor

    lr = _learner(**kw).fit(data, client=client, epochs=1)
    assert lr.state.lanes is None and lr.state.cursor.epoch == 1
    lr.state.lanes = [Cursor().to_dict()] * 2
    # one process takes over, stops mid-epoch, and resumes in one process
    mid = NaturalGradientLearner.from_state_dict(lr.state_dict()).fit(
        data, epochs=2, max_samples=ROWS + 3000)
    assert mid.state.lanes is None
    NaturalGradientLearner.from_state_dict(mid.state_dict()).fit(data, epochs=2)


def test_a_failed_data_informed_start_is_not_skipped_on_resume(data, client, monkeypatch):
    from natgrad_stream.errors import DistributedError

    def lost(self, batch_size, read_buffer_bytes=None):
        raise DistributedError("lost the Dask cluster at tcp://x (test)")

    monkeypatch.setattr(DaskBackend, "initial_params", lost)
    lr = _learner(optimizer="lbfgs")
    assert lr.state.data_init
    with pytest.raises(DistributedError):
        lr.fit(data, client=client)
    assert lr.state.data_init


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_bad_values_on_a_worker_are_a_data_error_naming_the_row(tmp_path, client, optimizer):
    import zarr

    from natgrad_stream.data.manifest import write_manifest
    from natgrad_stream.errors import DataError

    path = tmp_path / "nan.zarr"
    make_dataset(path, task="logistic", rows=10_000, features=D, chunk_rows=CHUNK, seed=4)
    zarr.open_group(str(path), mode="r+")["X"][7000, 2] = np.nan
    write_manifest(path)  # a change on purpose: the values, not the manifest, are refused
    with pytest.raises(DataError) as info:
        _learner(optimizer=optimizer).fit(path, client=client)
    assert (info.value.array, info.value.row, info.value.chunk) == ("X", 7000, 7000 // CHUNK)
    assert "non-finite value" in str(info.value), info.value


def test_task_errors_other_than_the_packages_are_one_distributed_error(client):
    from natgrad_stream.errors import DataError, DistributedError

    backend = DaskBackend(client, DataSpec("x", chunk_rows=1, n_rows=1), make_model(
        "logistic", 2))
    with pytest.raises(DataError):
        backend._raise_task_error(DataError("bad", array="X", row=3))
    with pytest.raises(DistributedError, match="RuntimeError: boom"):
        backend._raise_task_error(RuntimeError("boom\nmore"))


def test_a_local_cluster_that_fails_to_start_is_one_line_and_exit_2(data, tmp_path, capsys,
                                                                    monkeypatch):
    from natgrad_stream.app.cli import main

    def fails(*args, **kwargs):
        raise RuntimeError("Cluster failed to start: Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", fails)
    rc = main(["fit", str(data), "--model", "logistic", "--out", str(tmp_path / "r"),
               "--dask-workers", "2", "--progress", "never"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not start a local Dask cluster of 2 workers" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
