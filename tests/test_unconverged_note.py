"""A fit that its cap stopped before its stopping rule held says so in one line, with the
decrement where one was measured and how to continue; a converged fit says nothing.
"""

import pytest

from .test_cli import run_cli


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("natgrad-stream fit: warning:")]


def test_one_pass_says_no_check_was_made_and_how_to_continue(small_zarr, tmp_path, capsys):
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--model", "logistic", "--epochs", 1, "--progress", "never")
    assert code == 0 and summary["converged"] is False and summary["decrement"] is None
    (line,) = _warnings(err)
    assert "stopped by the pass cap (epochs=1) before any convergence check" in line
    assert "--resume --epochs 2" in line
    # following the advice converges, silently
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--resume", "--epochs", 30, "--progress", "never")
    assert code == 0 and summary["converged"] is True and summary["epochs"] < 30
    assert _warnings(err) == []


def test_a_capped_scoring_run_names_its_decrement(small_zarr, tmp_path, capsys):
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--model", "logistic", "--epochs", 2, "--progress", "never")
    assert code == 0 and summary["converged"] is False
    (line,) = _warnings(err)
    rel = summary["decrement"] / abs(summary["train_loss"])
    assert f"Newton decrement at {rel:.3g}·|J|" in line and "--resume --epochs 4" in line


def test_a_capped_lbfgs_run_says_so(small_zarr, tmp_path, capsys):
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--model", "logistic", "--optimizer", "lbfgs",
                                 "--lbfgs-rounds", 1, "--lbfgs-iters", 1, "--lbfgs-tol", 0,
                                 "--lbfgs-gtol", 0, "--progress", "never")
    assert code == 0 and summary["converged"] is False
    (line,) = _warnings(err)
    assert "round cap (lbfgs_rounds=1)" in line and "--resume --lbfgs-rounds 2" in line


def test_a_capped_run_returns_the_point_it_measured_not_an_unchecked_step(
        small_zarr, tmp_path, capsys):
    """The last scoring pass measures J at θ and steps on; the cap then ends the run. What
    the run reports (summary, params, evaluate, ``learner.theta``) is the measured point, so
    ``train_loss`` equals ``evaluate`` on the training data; the checkpoint keeps the step,
    so ``--resume`` continues exactly.
    """
    import numpy as np

    from natgrad_stream.app.runs import load_learner

    code, summary, _ = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                               "--model", "logistic", "--epochs", 3, "--progress", "never")
    assert code == 0 and summary["converged"] is False
    code, scores, _ = run_cli(capsys, "evaluate", tmp_path / "r", small_zarr)
    assert code == 0
    assert abs(scores["log_loss"] - summary["train_loss"]) <= 1e-12 * summary["train_loss"]
    learner, _ = load_learner(tmp_path / "r")
    s = learner.state
    assert s.refine_dir is not None  # a step awaits its check ...
    assert np.array_equal(learner.theta, s.refine_theta)  # ... and is not what is reported
    assert not np.array_equal(s.theta, s.refine_theta)
    code, params, _ = run_cli(capsys, "params", tmp_path / "r")
    assert np.allclose([*params["coef"], params["intercept"]], s.refine_theta, rtol=0, atol=0)
    # continuing equals running the passes at once
    code, resumed, _ = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                               "--resume", "--epochs", 5, "--progress", "never")
    code, whole, _ = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "w",
                             "--model", "logistic", "--epochs", 5, "--progress", "never")
    assert resumed["train_loss"] == whole["train_loss"]


def test_after_a_rejected_scoring_step_train_loss_is_the_returned_points():
    """A scoring pass whose step raised J shortens it (Armijo); if the cap ends the run
    there, the returned θ is the last accepted point and ``train_loss`` its loss, not the
    rejected trial's (Poisson, log link, a wide feature: Newton overshoots at pass 3).
    """
    import numpy as np

    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 2)) * [3.0, 1.0]
    y = rng.poisson(np.exp(np.clip(1.0 + 1.2 * X[:, 0] - 0.5 * X[:, 1], -20, 12)))
    model = make_model("poisson", 2)
    with pytest.warns(RuntimeWarning, match="diverging"):  # the streaming pass 1 rolls back
        learner = NaturalGradientLearner(model, batch_size=256).fit((X, y.astype(float)),
                                                                    epochs=3)
    assert learner.state.refine_t < 1  # the last pass rejected a step
    assert learner.result.train_loss == pytest.approx(model.loss(X, y, learner.theta),
                                                      rel=1e-12)


def test_a_summary_without_a_measuring_pass_reports_running_loss(small_zarr, tmp_path,
                                                                 capsys):
    code, summary, _ = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                               "--model", "logistic", "--epochs", 1, "--progress", "never")
    assert code == 0 and "train_loss" not in summary and summary["running_loss"] > 0


@pytest.mark.parametrize("structure", ["full", "diagonal", "block"])
@pytest.mark.parametrize("refine", ["scoring", "lbfgs", "stream", "newton-cg"])
@pytest.mark.parametrize("l2", [None, 0.01])
def test_train_loss_is_evaluate_for_every_structure_and_later_pass_method(
        small_zarr, tmp_path, capsys, structure, refine, l2):
    """Issue 18: whatever the structure and the later-pass method, capped or converged, with
    or without a penalty, the summary's ``train_loss`` (or, where no pass measured the
    returned point, ``running_loss`` in its place) is what ``evaluate`` reports on the
    training data, to 1e-12; with ``--l2`` the summary's ``objective`` adds λ/2‖coef‖² to it.
    """
    import json

    import numpy as np

    extra = [] if l2 is None else ["--l2", l2]
    code, summary, _ = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                               "--model", "logistic", "--structure", structure,
                               "--refine", refine, "--epochs", 4, "--progress", "never",
                               *extra)
    assert code == 0
    code, scores, _ = run_cli(capsys, "evaluate", tmp_path / "r", small_zarr)
    assert code == 0
    if refine == "stream":  # more streaming passes: no pass measures the returned point
        assert "train_loss" not in summary and "running_loss" in summary
        return
    assert summary["epochs"] <= 4
    assert abs(scores["log_loss"] - summary["train_loss"]) <= 1e-12 * summary["train_loss"]
    if l2 is not None:
        code, params, _ = run_cli(capsys, "params", tmp_path / "r")
        penalty = 0.5 * l2 * float(np.sum(np.square(params["coef"])))
        assert summary["objective"] == pytest.approx(summary["train_loss"] + penalty,
                                                     rel=1e-12)
        assert abs(scores["objective"] - summary["objective"]) <= 1e-12 * summary["objective"]
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["options"]["refine"] == refine and run["options"]["structure"] == structure


def test_one_pass_of_a_hand_over_run_says_no_check_was_made(small_zarr, tmp_path, capsys):
    """``--refine lbfgs --epochs 1``: no round ran, so the line says no check was made (it
    printed "after 0 complete L-BFGS round(s), the last improving the loss by nan").
    """
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--model", "logistic", "--refine", "lbfgs", "--epochs", 1,
                                 "--progress", "never")
    assert code == 0 and summary["converged"] is False
    (line,) = _warnings(err)
    assert "before any convergence check" in line and "nan" not in line
    assert "--resume --epochs 2" in line


def test_a_round_cut_short_by_the_cap_is_named_so(tmp_path, capsys):
    """A hand-over whose cap cut its L-BFGS round short (no convergence check on it) says
    so, not "after 0 complete L-BFGS round(s), the last improving the loss by …".
    """
    import numpy as np

    from .conftest import write_group

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3))
    y = np.tanh(X @ np.array([1.5, -2.0, 0.5])) + 0.1 * rng.standard_normal(300)
    write_group(tmp_path / "d.zarr", X=X, y=y)
    code, summary, err = run_cli(capsys, "fit", tmp_path / "d.zarr", "--out", tmp_path / "r",
                                 "--model", "mlp", "--hidden", 3, "--epochs", 8,
                                 "--progress", "never")
    assert code == 0 and summary["converged"] is False
    (line,) = _warnings(err)
    assert "after 0 complete" not in line and "the last improving" not in line
    assert "cut short by the cap" in line and "--resume --epochs 16" in line
