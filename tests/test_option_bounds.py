"""Every numeric fit option has a sane maximum, the same on the command line, in a config
file and from Python (issue 19: ``--keep-checkpoints 99999999999999999999`` hung in the
checkpoint rotation, ``--drift-probes`` of 1e20 failed deep in NumPy).

The tests run over the options table, so an option added to it is covered.
"""

import numpy as np
import pytest

from natgrad_stream.app.cli import main
from natgrad_stream.errors import OptionError
from natgrad_stream.training import options as opts

NOT_NUMERIC = (opts.text, opts.flag, opts._choice)
NUMERIC = [o for o in opts.OPTIONS if o.check not in NOT_NUMERIC and o.choices is None]
INTEGER = (opts.positive_int, opts.nonnegative_int, opts.fisher_every, opts.auto_or_count,
           opts.byte_size)


def _over(opt):
    """A value just over ``opt``'s maximum (the schedule: its ``every`` just over)."""
    if isinstance(opt.maximum, dict):
        return f"every:{opt.maximum['every'] + 1}"
    return opt.maximum + 1 if opt.check in INTEGER else opt.maximum * 1.5


def _absurd(opt) -> str:
    """What the fault-injection campaign typed: a number of 20 digits or 1e30."""
    if isinstance(opt.maximum, dict):
        return "every:" + "9" * 30
    return "9" * 30 if opt.check in INTEGER else "1e30"


def test_numeric_options_found():
    names = {o.name for o in NUMERIC}
    assert {"keep_checkpoints", "drift_probes", "batch_size", "lr", "poll_seconds",
            "read_buffer_bytes", "rewhiten", "seed"} <= names


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.name)
def test_every_numeric_option_has_a_maximum(opt):
    assert opt.maximum is not None, f"{opt.name}: declare maximum= in the options table"
    default = opt.default_for(opts.STREAM)
    if default is not None and default != "auto":
        opt.parse(default)  # the default is within its own bound


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.name)
def test_python_bound_is_inclusive(opt):
    top = opt.maximum
    if not isinstance(top, dict):
        assert opt.parse(top) == top  # the maximum itself is accepted
    with pytest.raises(OptionError, match=rf"^{opt.name} must (be|have every) <= "):
        opt.parse(_over(opt))


@pytest.mark.parametrize("opt", [o for o in NUMERIC if o.cli_flag], ids=lambda o: o.name)
def test_cli_refuses_absurd_value_in_one_line(tmp_path, capsys, opt):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tmp_path / "d.zarr"), "--out", str(tmp_path / "run"),
              opt.cli_flag, _absurd(opt)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"natgrad-stream fit: error: argument {opt.cli_flag}: ")
    assert " <= " in first and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("opt", NUMERIC, ids=lambda o: o.name)
def test_config_file_refuses_absurd_value(tmp_path, capsys, opt):
    value = _over(opt)
    toml = f'"{value}"' if isinstance(value, str) else repr(value)
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{tmp_path / "d.zarr"}"\nout = "{tmp_path / "run"}"\n'
                      f"{opt.name} = {toml}\n")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{opt.name} must" in err and " <= " in err
    assert not (tmp_path / "run").exists()


def test_keep_checkpoints_of_twenty_digits_is_refused_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tmp_path / "d.zarr"), "--out", str(tmp_path / "run"),
              "--keep-checkpoints", "99999999999999999999"])
    assert exc.value.code == 2
    assert "--keep-checkpoints must be <= 1,000, got 99999999999999999999" in \
        capsys.readouterr().err


def test_learner_and_estimator_share_the_bounds():
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import LogisticRegression
    from natgrad_stream.sklearn import NaturalGradientClassifier

    with pytest.raises(OptionError, match="drift_probes must be <= 1,000"):
        NaturalGradientLearner(LogisticRegression(3), drift_probes=10**20)
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(float)
    with pytest.raises(ValueError, match="batch_size must be <= "):
        NaturalGradientClassifier(batch_size=10**20).fit(X, y)
    with pytest.raises(ValueError, match="max_iter must be <= "):
        NaturalGradientClassifier(max_iter=10**20).fit(X, y)


@pytest.mark.parametrize(("flag", "value", "phrase"), [
    ("--rows", "9" * 20, "must be <= 1,000,000,000,000"),
    ("--features", "10000001", "must be <= 1,000,000"),
    ("--chunk-rows", "9" * 12, "must be <= 67,108,864"),
    ("--test-rows", "9" * 20, "must be <= 1,000,000,000,000"),
    ("--seed", "9" * 20, "must be <= 4,294,967,295"),
    ("--seed", "-1", "must be >= 0"),
])
def test_make_data_bounds(tmp_path, capsys, flag, value, phrase):
    args = {"--rows": "10", "--features": "2", flag: value}
    with pytest.raises(SystemExit) as exc:
        main(["make-data", str(tmp_path / "d.zarr"), "--task", "logistic",
              *[x for kv in args.items() for x in kv]])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"natgrad-stream make-data: error: argument {flag}: {phrase}")
    assert not (tmp_path / "d.zarr").exists()
