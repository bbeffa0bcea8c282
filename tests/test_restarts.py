"""Restarts (``n_init``): whole fits from different random starts, the best kept."""

import json

import numpy as np
import pytest

from natgrad_stream.app.cli import main
from natgrad_stream.errors import OptionError
from natgrad_stream.evaluate import evaluate
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.models.mlp import (
    MLP_MAX_AUTO_RESTARTS,
    MLP_MAX_SCREENED,
    MLP_RESTART_ROW_BUDGET,
    MLP_ROUND_ITERS,
    MLP_SCREEN_KEPT,
    MLP_SCREEN_ROUNDS,
)
from natgrad_stream.training.callbacks import ProgressBar
from natgrad_stream.training.learner import pass_cap_notes_dropped
from natgrad_stream.training.restarts import planned_rows

from .conftest import write_group


def _data(n=300, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.tanh(X @ np.array([1.5, -2.0, 0.5][:d])) + np.sin(2 * X[:, 0]) \
        + 0.1 * rng.standard_normal(n)
    return X, y


def _fit(seed, data, **kw):
    model = make_model("mlp", data[0].shape[1], hidden=3, seed=seed)
    return NaturalGradientLearner(model, **kw).fit(data, epochs=20)


def test_mlp_restart_budget():
    """Small data: as many raced starts as MLP_SCREEN_ROW_BUDGET row evaluations of their
    screens allow, at most MLP_MAX_SCREENED; larger data: as many whole fits as
    MLP_RESTART_ROW_BUDGET allows, each at the mlp's own pass cap, 1 to
    MLP_MAX_AUTO_RESTARTS.
    """
    m = make_model("mlp", 10)
    assert m.auto_restarts(442) == MLP_MAX_SCREENED == 30
    assert m.restart_screen(442) == (MLP_SCREEN_ROUNDS, MLP_SCREEN_KEPT) == (2, 2)
    for n in (442, 5_000, 12_000):
        k = m.auto_restarts(n)
        assert m.restart_screen(n) is not None and 3 <= k <= MLP_MAX_SCREENED
        # a screen's passes are far below the fit's cap, so racing saves passes
        assert 2 * (1 + MLP_SCREEN_ROUNDS * MLP_ROUND_ITERS) <= m.auto_pass_cap(n)
    assert m.auto_restarts(5_000) == 8
    for n in (50_000, 1_000_000, 3_000_000):
        k = m.auto_restarts(n)
        assert m.restart_screen(n) is None and 1 <= k <= MLP_MAX_AUTO_RESTARTS
        assert k == 1 or k * n * m.auto_pass_cap(n) <= MLP_RESTART_ROW_BUDGET
    assert m.auto_restarts(3_000_000) == 1
    # never fewer starts than the whole fits a larger set gets
    assert m.auto_restarts(12_000) >= m.auto_restarts(20_000)
    assert make_model("logistic", 3).auto_restarts(100) == 1
    assert make_model("logistic", 3).restart_screen(100) is None
    assert m.restart_model(0) is m and m.restart_model(3).seed == 3
    assert m.restart_model(2).config() == {**m.config(), "seed": 2}


class _Seen(ProgressBar):
    """A progress display that records the samples it is shown and the planned total."""

    def __init__(self):
        super().__init__(interval=1e9)
        self.samples, self.total = [], None

    def on_fit_start(self, learner, total):
        super().on_fit_start(learner, total)
        self.total = total
        self.total_per_fit = learner.strategy.total_rows(
            type("S", (), {"n_rows": 150})(), {"epochs": learner.model.auto_pass_cap(150)})

    def on_batch_end(self, learner, info, cursor):
        self.samples.append(learner.samples)


def test_planned_rows_of_raced_and_whole_restarts():
    assert planned_rows(4_420_000, 30, (2, 2), 442, 500) == 30 * 442 * 1001 + 2 * 4_420_000
    assert planned_rows(4_420_000, 30, None, 442, 500) == 30 * 4_420_000
    assert planned_rows(1000, 4, (2, 2), 100, 500) == 4 * 1000 + 2 * 1000  # screen ≤ a fit
    assert planned_rows(None, 3, (2, 2), 100, 500) is None


def test_raced_restarts_continue_the_lowest_screens_exactly(monkeypatch):
    """A raced default fit screens every start for ``rounds`` complete L-BFGS rounds and
    continues only the ``kept`` lowest there; a continued start is exactly the fit of its
    start alone (a round's end is an exact restart point), and the lowest of those is kept.
    """
    from natgrad_stream.models.mlp import MLPRegressor

    monkeypatch.setattr(MLPRegressor, "auto_restarts", lambda self, n: 5)
    monkeypatch.setattr(MLPRegressor, "restart_screen", lambda self, n: (1, 2))
    monkeypatch.setattr(MLPRegressor, "handover_defaults",
                        {**MLPRegressor.handover_defaults, "lbfgs_iters": 15})
    data = _data(n=150)
    kw = {}
    alone = [NaturalGradientLearner(make_model("mlp", 3, hidden=2, seed=k), n_init=1,
                                    **kw).fit(data) for k in range(5)]
    screens = []
    for k in range(5):
        one = NaturalGradientLearner(make_model("mlp", 3, hidden=2, seed=k), n_init=1, **kw)
        one._round_limit = 1
        with pass_cap_notes_dropped():  # (a paused fit, not one its cap stopped)
            screens.append(one.fit(data).result.train_loss)
    assert len(set(screens)) == 5
    seen = _Seen()
    lr = NaturalGradientLearner(make_model("mlp", 3, hidden=2), **kw).fit(data,
                                                                          callbacks=[seen])
    records = lr.result.restarts
    # progress counts every start's rows once, within the planned total
    rows = lr.result.rows_per_s * lr.result.seconds
    assert seen.samples == sorted(seen.samples)
    assert seen.samples[-1] == pytest.approx(rows, rel=1e-9)
    assert rows <= seen.total == planned_rows(seen.total_per_fit, 5, (1, 2), 150, 15)
    assert [r["screen_loss"] for r in records] == screens  # same process
    finalists = sorted(range(5), key=lambda k: screens[k])[:2]
    for r, a in zip(records, alone, strict=True):
        if r["restart"] in finalists:
            assert "screened_out" not in r
            assert r["train_loss"] == a.result.train_loss and r["epochs"] == a.result.epochs
            assert r["converged"] == a.result.converged
        else:
            assert r["screened_out"] and r["train_loss"] == r["screen_loss"]
    assert any(records[k]["train_loss"] < records[k]["screen_loss"] for k in finalists)
    best = min(finalists, key=lambda k: (alone[k].result.train_loss, k))
    assert [r["kept"] for r in records] == [k == best for k in range(5)]
    np.testing.assert_array_equal(lr.theta, alone[best].theta)
    assert lr.result.train_loss == alone[best].result.train_loss
    assert lr.model.seed == best


def test_the_kept_fit_is_the_lowest_loss_of_independent_fits():
    """Each restart is exactly the fit of its start alone; the learner ends holding the one
    with the lowest training loss, and its summary's loss is the loss of that θ.
    """
    data = _data()
    alone = [_fit(k, data) for k in range(3)]
    lr = NaturalGradientLearner(make_model("mlp", 3, hidden=3), n_init=3).fit(data, epochs=20)
    records = lr.result.restarts
    assert [r["restart"] for r in records] == [0, 1, 2]
    assert [r["model"]["seed"] for r in records] == [0, 1, 2]
    for r, a in zip(records, alone, strict=True):
        assert r["train_loss"] == a.result.train_loss  # same machine, same process
        assert r["epochs"] == a.result.epochs
    losses = [a.result.train_loss for a in alone]
    best = int(np.argmin(losses))
    assert len(set(losses)) == 3  # the starts differ (else the test would prove nothing)
    assert [r["kept"] for r in records] == [k == best for k in range(3)]
    np.testing.assert_array_equal(lr.theta, alone[best].theta)
    assert lr.model.seed == best
    assert lr.result.train_loss == min(losses)
    mse = evaluate(lr.model, lr.theta, data)["mse"]
    assert lr.result.train_loss == pytest.approx(0.5 * mse, rel=1e-12)
    out = lr.result.to_dict()
    assert [r["kept"] for r in out["restarts"]].count(True) == 1
    assert "event" not in out["restarts"][0]
    # the kept fit continues as itself
    more = NaturalGradientLearner.from_state_dict(lr.state_dict())
    assert more.model.seed == best and more.round_metric == "kfac"


def test_auto_restarts_only_for_a_default_fit():
    data = _data(n=120)
    lr = NaturalGradientLearner(make_model("mlp", 3, hidden=2)).fit(data, epochs=3)
    assert lr.result.restarts is None and "restarts" not in lr.result.to_dict()
    lr = NaturalGradientLearner(make_model("logistic", 3)).fit((data[0], data[1] > 0))
    assert lr.result.restarts is None  # a convex model draws no start


@pytest.mark.parametrize("kw, fit_kw, match", [
    ({}, {"epochs": 1}, "passes after the first"),
    ({"refine": "stream"}, {"epochs": 3}, "passes after the first"),
    ({}, {"epochs": 3, "max_samples": 500}, "max_samples"),
])
def test_restarts_that_cannot_choose_are_refused(kw, fit_kw, match):
    lr = NaturalGradientLearner(make_model("mlp", 3, hidden=2), n_init=2, **kw)
    with pytest.raises(OptionError, match=match):
        lr.fit(_data(n=120), **fit_kw)
    with pytest.raises(ValueError, match="draws no random start"):
        NaturalGradientLearner(make_model("logistic", 3), n_init=2).fit(
            (_data(n=120)[0], _data(n=120)[1] > 0), epochs=3)
    with pytest.raises(OptionError, match="n_init must be >= 1"):
        NaturalGradientLearner(make_model("mlp", 3), n_init=0)


class _StopAt(ProgressBar):
    """A progress display (restarts forward it their batches) that asks the learner to
    stop once the fits together have read ``rows`` rows.
    """

    def __init__(self, learner, rows):
        super().__init__(interval=1e9)
        self.learner, self.rows = learner, rows

    def on_batch_end(self, learner, info, cursor):
        if learner.samples >= self.rows:
            self.learner.request_stop()


def test_an_interrupted_restart_keeps_nothing_and_a_rerun_is_exact():
    data = _data()
    whole = NaturalGradientLearner(make_model("mlp", 3, hidden=3), n_init=3).fit(data,
                                                                                 epochs=20)
    lr = NaturalGradientLearner(make_model("mlp", 3, hidden=3), n_init=3)
    lr.fit(data, epochs=20, callbacks=[_StopAt(lr, 20 * 300 + 600)])  # in the 2nd fit
    assert lr.result.interrupted and lr.samples == 0 and lr.model.seed == 0
    assert len(lr.restart_records) == 1
    lr.fit(data, epochs=20)  # the restarts again, from the first
    np.testing.assert_array_equal(lr.theta, whole.theta)
    def timeless(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert timeless(lr.result.restarts) == timeless(whole.result.restarts)


def test_cli_records_the_restarts_and_resumes_the_kept_fit(tmp_path, capsys):
    X, y = _data()
    data = tmp_path / "d.zarr"
    write_group(data, X=X.astype(np.float32), y=y.astype(np.float32))
    run = tmp_path / "run"
    code = main(["fit", str(data), "--model", "mlp", "--hidden", "3", "--n-init", "3",
                 "--epochs", "20", "--out", str(run), "--progress", "never"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    kept = [r for r in summary["restarts"] if r["kept"]]
    assert len(summary["restarts"]) == 3 and len(kept) == 1
    assert summary["train_loss"] == kept[0]["train_loss"]
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["seed"] == kept[0]["model"]["seed"]
    assert info["options"]["n_init"] == 3 and info["options"]["round_metric"] == "kfac"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["restart"] for r in log if r.get("event") == "restart"] == [0, 1, 2]
    code = main(["evaluate", str(run), str(data)])
    ev = json.loads(capsys.readouterr()[0].strip().splitlines()[-1])
    assert code == 0
    assert 0.5 * ev["mse"] == pytest.approx(summary["train_loss"], rel=1e-9)
    code = main(["fit", str(data), "--resume", "--epochs", "25", "--out", str(run),
                 "--progress", "never"])
    out, err = capsys.readouterr()
    resumed = json.loads(out.strip().splitlines()[-1])
    assert code == 0, err
    assert "restarts" not in resumed and resumed["epochs"] == 25
    assert resumed["train_loss"] <= summary["train_loss"]


class _Rounds(ProgressBar):
    def __init__(self):
        super().__init__(interval=1e9)
        self.records = []

    def on_round(self, learner, record):
        self.records.append(record)


def test_the_mlp_rounds_rule_is_relative_to_the_first_rounds_start():
    """The rounds' improvement rule is relative to the loss at the first round's start
    (``round_tol_from_start``), so it reads the same in any units of y. Before, the rule's
    floor of 1 made it absolute on a small loss and relative on a large one: on diabetes no
    raw fit of seeds 0–9 converged in 10,000 passes while 8 standardized ones did.
    """
    X, y = _data(n=300)
    for scale in (1.0, 1000.0):
        rounds = _Rounds()
        lr = NaturalGradientLearner(make_model("mlp", 3, hidden=3), n_init=1)
        lr.fit((X, y * scale), epochs=3000, callbacks=[rounds])
        first = rounds.records[0]["loss_start"]
        assert lr.state.round_tol_scale == first
        for r in rounds.records:
            assert r["relative_improvement"] == pytest.approx(
                (r["loss_start"] - r["loss"]) / max(r["loss_start"], r["loss"], first),
                rel=1e-12)
        assert lr.result.converged and lr.result.epochs < 3000
        assert rounds.records[-1]["relative_improvement"] <= lr.lbfgs_tol == 1e-4
        again = NaturalGradientLearner.from_state_dict(lr.state_dict())
        assert again.state.round_tol_scale == first  # kept by the checkpoint


def test_the_log_of_a_restarted_fit_records_every_fit_and_plots(tmp_path, capsys):
    """metrics.jsonl keeps each restart's progress, re-whitenings and rounds (tagged with
    ``restart``, samples counted over all the fits) and its validation; ``plot`` draws it.
    """
    pytest.importorskip("matplotlib")
    X, y = _data()
    data = tmp_path / "d.zarr"
    write_group(data, X=X.astype(np.float32), y=y.astype(np.float32),
                X_test=X[:50].astype(np.float32), y_test=y[:50].astype(np.float32))
    run = tmp_path / "run"
    code = main(["fit", str(data), "--model", "mlp", "--hidden", "3", "--n-init", "2",
                 "--epochs", "20", "--out", str(run), "--progress", "never",
                 "--log-every", "1000", "--val", str(data), "--val-x", "X_test",
                 "--val-y", "y_test", "--val-every", "2000"])
    assert code == 0, capsys.readouterr()[1]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in log if r["event"] == "progress"]
    assert {r.get("restart") for r in progress} == {0, 1}
    samples = [r["samples"] for r in progress]
    assert samples == sorted(samples) and samples[-1] > 20 * 300
    assert {r.get("restart") for r in log if r["event"] == "rewhiten"} == {0, 1}
    for kind in ("rewhiten", "round", "progress"):  # on one samples axis
        at = [[r["samples"] for r in log if r["event"] == kind and r.get("restart") == k]
              for k in (0, 1)]
        assert at[0] and at[1] and max(at[0]) <= min(at[1]), kind
    assert {r.get("restart") for r in log if r["event"] == "validation"} >= {0, 1}
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0, \
        capsys.readouterr()[1]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_restarts_refused_in_follow_mode_say_so(tmp_path, capsys):
    """A followed store is a store: the refusal names follow mode, not the data's kind."""
    X, y = _data(n=120)
    data = tmp_path / "d.zarr"
    write_group(data, X=X.astype(np.float32), y=y.astype(np.float32))
    code = main(["fit", str(data), "--model", "mlp", "--n-init", "2", "--follow",
                 "--idle-timeout", "1", "--out", str(tmp_path / "run"), "--progress", "never"])
    err = capsys.readouterr()[1]
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "follow" in err and "arrays or a store" not in err


def test_run_json_is_strict_json_when_a_restart_is_interrupted(tmp_path):
    """A run stopped during its restarts has learned nothing: its summary's loss is not a
    number. run.json, like the printed summary and the log, holds null there (it held
    ``NaN``, which strict JSON parsers refuse).
    """
    import threading

    from natgrad_stream.app.runs import fit_run

    X, y = _data()
    data = tmp_path / "d.zarr"
    write_group(data, X=X.astype(np.float32), y=y.astype(np.float32))

    def stop_soon(learner):  # once the restarts are under way
        threading.Timer(0.5, learner.request_stop).start()

    summary = fit_run(str(data), tmp_path / "run", model="mlp", n_init=3, epochs=5000,
                      progress="never", stop_handler=stop_soon)
    assert summary["interrupted"] and summary["samples"] == 0
    text = (tmp_path / "run" / "run.json").read_text()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    recorded = json.loads(text, parse_constant=refuse)["summary"]
    assert recorded["running_loss"] is None and recorded["interrupted"]
