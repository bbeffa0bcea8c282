"""A fit that failed: a run directory with no checkpoint does not block a fresh fit of the
same ``--out`` and no message advises ``--resume`` for it; one with a checkpoint keeps it,
and the advice to ``--resume`` then works (nothing learned is lost).
"""

import json

import numpy as np
import pytest

from natgrad_stream.learner import NaturalGradientLearner

from .conftest import write_group
from .test_cli import _digest, run_cli


@pytest.fixture()
def groups(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3)).astype(np.float32)
    y = (rng.random(1000) < 1 / (1 + np.exp(-X @ [1.0, -0.5, 0.3]))).astype(np.uint8)
    Xnan = X.copy()
    Xnan[612, 1] = np.nan
    return (write_group(tmp_path / "good.zarr", X=X, y=y),
            write_group(tmp_path / "nan.zarr", X=Xnan, y=y))


def test_a_fit_that_failed_before_its_first_checkpoint_blocks_nothing(groups, tmp_path,
                                                                      capsys):
    good, bad = groups
    # a data error found mid-pass (exit 2) and a learning failure (exit 1)
    for run, args, exit_code in ((tmp_path / "data-error", [bad], 2),
                                 (tmp_path / "diverged",
                                  [good, "--lr", 1e6, "--batch-size", 200], 1)):
        code, out, err = run_cli(capsys, "fit", *args, "--model", "logistic", "--out", run)
        assert code == exit_code and out is None, err
        assert "--resume" not in err and "last good checkpoint is kept" not in err
        assert not list(run.glob("checkpoint*.npz"))
        if run.exists():  # what is left holds the failure's log: nothing to resume
            records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text()
                       .splitlines()]
            assert records[-1]["event"] == "error"
            code, _, err = run_cli(capsys, "fit", good, "--out", run, "--resume")
            assert code == 2 and "nothing to resume" in err and "without --resume" in err
            assert "pass --resume" not in err
        # the same command on good data (no --overwrite, no --resume) is a fresh run
        code, summary, err = run_cli(capsys, "fit", good, "--model", "logistic", "--out", run,
                                     "--epochs", 1)
        assert code == 0, err
        assert summary["samples"] == 1000 and (run / "checkpoint.npz").is_file()
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["event"] for r in records].count("start") == 1  # the failed log is gone
        assert records[-1]["event"] == "end"


def test_a_fit_that_failed_after_a_checkpoint_keeps_it_and_resume_continues(
        groups, tmp_path, capsys, monkeypatch):
    good, _ = groups
    whole, run = tmp_path / "whole", tmp_path / "run"
    common = ["--model", "logistic", "--epochs", 2, "--batch-size", 100, "--seed", 3,
              "--refine", "stream"]
    assert run_cli(capsys, "fit", good, "--out", whole, *common)[0] == 0
    step = NaturalGradientLearner.step

    def failing_step(self, *args, **kwargs):
        if self.samples >= 1500:
            raise FloatingPointError("injected failure")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(NaturalGradientLearner, "step", failing_step)
    code, out, err = run_cli(capsys, "fit", good, "--out", run, *common,
                             "--checkpoint-every", 400)
    assert code == 1 and out is None and "injected failure" in err
    monkeypatch.setattr(NaturalGradientLearner, "step", step)
    assert (run / "checkpoint.npz").is_file()
    kept = _digest(run / "checkpoint.npz")
    # a fresh fit is refused (something was learned); the advice it gives works
    code, _, err = run_cli(capsys, "fit", good, "--out", run, *common)
    assert code == 2 and "pass --resume" in err
    assert _digest(run / "checkpoint.npz") == kept
    code, summary, err = run_cli(capsys, "fit", good, "--out", run, "--resume")
    assert code == 0, err
    assert summary["samples"] == 2000
    assert run_cli(capsys, "params", run)[1] == run_cli(capsys, "params", whole)[1]
