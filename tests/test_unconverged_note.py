"""A fit that its cap stopped before its stopping rule held says so in one line, with the
decrement where one was measured and how to continue; a converged fit says nothing.
"""

from .test_cli import run_cli


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("natgrad-stream fit: warning:")]


def test_one_pass_says_no_check_was_made_and_how_to_continue(small_zarr, tmp_path, capsys):
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--model", "logistic", "--progress", "never")
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
