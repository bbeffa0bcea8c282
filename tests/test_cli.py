"""The natgrad-stream command line: the contract of names, options and outputs."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from natgrad_stream.app.cli import main

from .conftest import write_group


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in out.strip().splitlines() if ln]
    return code, (json.loads(lines[-1]) if lines else None), err


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("task", ["logistic", "linear", "gaussian-mean"])
def test_make_data_fit_evaluate_params(tmp_path, capsys, task):
    data = tmp_path / "d.zarr"
    code, made, _ = run_cli(capsys, "make-data", data, "--task", task, "--rows", 3000,
                            "--features", 2 if task == "gaussian-mean" else 4,
                            "--chunk-rows", 500, "--test-rows", 700, "--seed", 5)
    assert code == 0 and made["rows"] == 3000
    g = zarr.open_group(str(data), mode="r")
    expected = {"X", "X_test"} | ({"A"} if task == "gaussian-mean" else {"y", "y_test"})
    assert set(g.array_keys()) == expected
    assert g["X"].chunks == (500, g["X"].shape[1])
    assert g.attrs["natgrad_stream"]["task"] == task

    run = tmp_path / "run"
    code, summary, _ = run_cli(capsys, "fit", data, "--model", task, "--out", run,
                               "--epochs", 2, "--batch-size", 128, "--seed", 1)
    assert code == 0
    assert {"samples", "steps", "rewhitens", "seconds", "rows_per_s", "train_loss"} <= set(summary)
    assert summary["samples"] == 6000 and summary["rewhitens"] >= 1
    assert (run / "checkpoint.npz").is_file() and (run / "run.json").is_file()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and records[-1]["event"] == "end"
    assert any(r["event"] == "rewhiten" and "condition_number" in r for r in records)

    code, ev, _ = run_cli(capsys, "evaluate", run, data, "--x", "X_test", "--y", "y_test")
    assert code == 0 and ev["n"] == 700
    measure = {"logistic": "log_loss", "linear": "mse", "gaussian-mean": "nll"}[task]
    assert np.isfinite(ev[measure])
    code, params, _ = run_cli(capsys, "params", run)
    if task == "gaussian-mean":
        mle = np.linalg.solve(g["A"][...], g["X"][...].astype(np.float64).mean(axis=0))
        assert np.allclose(params["theta"], mle, atol=1e-3)
    else:
        assert len(params["coef"]) == 4 and isinstance(params["intercept"], float)
        truth = g.attrs["natgrad_stream"]["true_params"]["coef"]
        assert np.corrcoef(params["coef"], truth)[0, 1] > 0.9


def test_resume_on_the_command_line_equals_uninterrupted(small_zarr, tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    common = ["--model", "logistic", "--epochs", 2, "--seed", 3]
    run_cli(capsys, "fit", small_zarr, "--out", whole, *common)
    code, s1, _ = run_cli(capsys, "fit", small_zarr, "--out", part, *common,
                          "--max-samples", 3000)
    assert code == 0 and s1["interrupted"] and s1["samples"] < 10_000
    code, s2, _ = run_cli(capsys, "fit", small_zarr, "--out", part, "--resume", "--epochs", 2)
    assert code == 0 and s2["samples"] == 10_000
    assert run_cli(capsys, "params", part)[1] == run_cli(capsys, "params", whole)[1]


def test_existing_run_is_refused_without_resume_or_overwrite(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", run)
    before = _digest(run / "checkpoint.npz")
    code, _, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", run)
    assert code == 2 and "already holds a run" in err
    assert _digest(run / "checkpoint.npz") == before
    code, _, _ = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", run,
                         "--overwrite", "--seed", 9)
    assert code == 0 and _digest(run / "checkpoint.npz") != before


def _bad_groups(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3)).astype(np.float32)
    y = (rng.random(1000) < 0.5).astype(np.uint8)
    Xnan = X.copy()
    Xnan[612, 1] = np.nan
    ybad = y.copy()
    ybad[877] = 3
    return {
        "nan": (write_group(tmp_path / "nan.zarr", X=Xnan, y=y),
                ["array 'X'", "chunk 6", "row 612", "column 1", "non-finite"]),
        "labels": (write_group(tmp_path / "lab.zarr", X=X, y=ybad),
                   ["array 'y'", "chunk 8", "row 877", "outside the logistic"]),
        "missing": (write_group(tmp_path / "mis.zarr", X=X), ["array 'y'", "not found", "['X']"]),
        "shape": (write_group(tmp_path / "shp.zarr", X=X, y=y[:900]), ["900 rows", "1000"]),
        "dtype": (write_group(tmp_path / "dt.zarr", X=X.astype(np.complex64), y=y),
                  ["complex64"]),
        "empty": (write_group(tmp_path / "emp.zarr", X=X[:0], y=y[:0]), ["empty"]),
        "features": (write_group(tmp_path / "f.zarr", X=X[:, :2], y=y), ["2 features"]),
    }


def test_bad_input_gives_clear_errors_and_leaves_the_run_intact(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    good = np.random.default_rng(1).standard_normal((1000, 3)).astype(np.float32)
    data = write_group(tmp_path / "good.zarr", X=good,
                       y=(good[:, 0] > 0).astype(np.uint8))
    code, _, _ = run_cli(capsys, "fit", data, "--model", "logistic", "--out", run,
                         "--epochs", 1, "--max-samples", 500)
    assert code == 0
    files = {p.name: _digest(p) for p in run.iterdir()
             if p.name not in ("metrics.jsonl", ".lock")}
    log_before = (run / "metrics.jsonl").read_text()
    for name, (path, phrases) in _bad_groups(tmp_path).items():
        # resuming on other data is refused before reading it (the data's identity)
        hows = [(["--resume", "--epochs", 2], ["is not the data the run", "was trained on"])]
        if name != "features":  # 2 features are fine for a new run, not for this one
            hows.append((["--model", "logistic", "--overwrite"], phrases))
        for how, expected in hows:
            code, out, err = run_cli(capsys, "fit", path, "--out", run, *how)
            assert code == 2, (name, how)
            for phrase in expected:
                assert phrase in err, (name, phrase, err)
            kept = {p.name: _digest(p) for p in run.iterdir()
                    if p.name not in ("metrics.jsonl", "metrics.jsonl.partial", ".lock")}
            assert kept == files
            assert (run / "metrics.jsonl").read_text().startswith(log_before)  # append-only
    # the run still resumes on good data
    code, summary, _ = run_cli(capsys, "fit", data, "--out", run, "--resume")
    assert code == 0 and summary["samples"] == 1000


def test_bad_input_on_a_new_run_writes_no_checkpoint(tmp_path, capsys):
    groups = _bad_groups(tmp_path)
    for name in ("nan", "missing", "dtype"):
        run = tmp_path / f"new-{name}"
        code, _, err = run_cli(capsys, "fit", groups[name][0], "--model", "logistic",
                               "--out", run)
        assert code == 2 and "error" in err
        assert not (run / "checkpoint.npz").exists()


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "x.zarr", "--model", "nope", "--out", "r"])
    capsys.readouterr()
    code, _, err = run_cli(capsys, "fit", tmp_path / "nowhere.zarr", "--model", "logistic",
                           "--out", tmp_path / "r")
    assert code == 2 and "no Zarr group" in err
    code, _, err = run_cli(capsys, "params", tmp_path / "r")
    assert code == 2 and "no checkpoint" in err
    code, _, err = run_cli(capsys, "make-data", tmp_path / "m.zarr", "--task", "gaussian-mean",
                           "--rows", 10, "--features", 3)
    assert code == 0
    code, _, err = run_cli(capsys, "make-data", tmp_path / "m.zarr", "--task", "logistic",
                           "--rows", 10, "--features", 3)
    assert code == 2 and "exists" in err


def test_console_script_and_demo(tmp_path):
    """The installed entry point runs the demo and lands within 0.1% of the optimum."""
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream.app.cli", "demo", "--out",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["samples"] == 200_000
    assert report["gap_percent"] < 0.1
    assert "held-out log-loss" in proc.stderr
    # with --out the run is kept where it says
    assert report["run"] == str(tmp_path / "demo") and report["run_kept"] is True
    assert str(tmp_path / "demo") in proc.stderr
    assert (tmp_path / "demo" / "checkpoint.npz").is_file()


def test_progress_line_and_metrics_log_fields(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", run,
                                 "--epochs", 2, "--log-every", 1000, "--progress", "always",
                                 "--checkpoint-every", 4000)
    assert code == 0
    assert "rows/s" in err and "loss" in err and "rewhitens" in err
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in records if r["event"] == "progress"]
    assert len(progress) >= 5
    assert {"step", "samples", "epoch", "loss", "grad_norm", "natural_grad_norm",
            "rows_per_s"} <= set(progress[0])
    refresh = [r for r in records if r["event"] == "rewhiten"]
    assert refresh[0]["reason"] == "initial"
    assert {"drift", "condition_number", "floored", "damping"} <= set(refresh[-1])
    assert records[-1]["event"] == "end" and records[-1]["samples"] == summary["samples"]


def test_cli_choices_mirror_the_registries():
    """The CLI keeps literal copies of the registries (so --help compiles no kernels)."""
    from natgrad_stream.app import cli
    from natgrad_stream.data.datasets import TASKS
    from natgrad_stream.models import METRICS, MODEL_NAMES, STRUCTURES

    assert set(cli.MODEL_CHOICES) == set(MODEL_NAMES)
    assert set(cli.TASK_CHOICES) == set(TASKS)
    assert cli.METRIC_CHOICES == METRICS
    # auto resolves to one of them; lowrank and kronecker are the learner's (their batches
    # accumulate the models' diagonal and a sketch, or softmax's Kronecker factors)
    assert cli.STRUCTURE_CHOICES == ("auto", *STRUCTURES, "lowrank", "kronecker")


def test_every_registered_model_and_task_loads():
    from natgrad_stream.data.datasets import TASKS, task_generator
    from natgrad_stream.models import MODELS

    for name in MODELS:
        cls = MODELS[name]
        assert cls.name == name
        assert cls.default_metric in cls.metrics
    for task in TASKS:
        gen = task_generator(task)
        assert hasattr(gen, "true_params") and hasattr(gen, "sample_chunk")


@pytest.mark.parametrize("argv, where, what", [
    (["fit", "x.zarr", "--model", "nope", "--out", "r"], "fit", "invalid choice: 'nope'"),
    (["fit", "x.zarr", "--model", "logistic", "--epochs", "0"], "fit", "--epochs"),
    (["fit", "x.zarr", "--nope"], "fit", "unrecognized arguments: --nope"),
    (["make-data", "d.zarr", "--task", "logistic"], "make-data", "--rows"),
    (["evaluate", "run"], "evaluate", "DATA"),
    (["plot"], "plot", "RUN"),
    (["nope"], None, "invalid choice: 'nope'"),
    ([], None, "required: COMMAND"),
])
def test_usage_errors_are_one_line_and_a_hint(capsys, argv, where, what):
    """A bad choice or value is its error line (and where to read more), not a usage."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    prog = "natgrad-stream" + (f" {where}" if where else "")
    assert out == "" and len(lines) == 2, err
    assert lines[0].startswith(f"{prog}: error: ") and what in lines[0], err
    assert lines[1] == f"see '{prog} --help'"


def _subcommands():
    import argparse

    from natgrad_stream.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_option_of_every_subcommand_has_a_help_text_and_its_default():
    import argparse

    parser, commands = _subcommands()
    assert set(commands) == {"make-data", "fit", "convert", "evaluate", "predict", "export",
                             "params", "summary", "plot", "demo"}
    for name, p in [("", parser), *commands.items()]:
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = action.option_strings or [action.dest]
            assert action.help and action.help.strip(), (name, label)
            default = action.default
            if action.option_strings and not any(default is v for v in
                                                 (None, False, argparse.SUPPRESS)):
                assert f"(default {default})" in text, (name, label, default)
