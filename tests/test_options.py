"""The options table: the CLI, the learner and run directories derive from it; a model's
recommendations apply under every optimizer; ``--resume`` checks options against the run.
"""

import argparse
import dataclasses
import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from natgrad_stream.app.cli import build_parser, main
from natgrad_stream.checkpoint import load_checkpoint, save_checkpoint
from natgrad_stream.data import as_source
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model
from natgrad_stream.models.mlp import RECOMMENDED_LEARNER_OPTIONS
from natgrad_stream.training import options as opts
from natgrad_stream.training.state import LearnerState

from .test_cli import _digest, run_cli


def _fit_actions():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices["fit"]._actions if a.option_strings}


def test_cli_flags_defaults_and_choices_equal_the_table():
    actions = _fit_actions()
    for opt in opts.OPTIONS:
        if opt.cli_flag is None:
            continue
        action = actions.pop(opt.cli_flag)
        assert action.dest == opt.name
        assert action.default is argparse.SUPPRESS  # unset stays unset: the table decides
        assert action.choices == opt.choices if opt.choices else action.choices is None
        if opt.default not in (None, False):
            assert f"default {opt.default}" in action.help, opt.name
    # what is left: the command's own flags and the --rewhiten-every shorthand
    assert sorted(actions) == ["--allow-legacy-checkpoint", "--config", "--out", "--overwrite",
                              "--resume", "--rewhiten-every", "-h"]
    assert actions["--rewhiten-every"].dest == "rewhiten"


def test_a_fit_with_no_options_takes_the_table_defaults(tmp_path):
    args = build_parser().parse_args(["fit", "DATA", "--out", str(tmp_path)])
    assert opts.given_options(args) == {}
    model = make_model("logistic", 3)
    eff = NaturalGradientLearner(model).effective_options
    for name in opts.LEARNER_OPTIONS:
        opt = opts.BY_NAME[name]
        if name in eff and opt.default is not None and name not in ("rewhiten",
                                                                     "fisher_every",
                                                                     "structure",
                                                                     "refine"):
            assert eff[name] == opt.default, name
    assert eff["metric"] == model.default_metric and eff["lr"] == 1.0
    assert eff["rewhiten"] == opts.rewhiten("rewhiten", "auto")
    assert eff["fisher_every"] == max(1, round(model.n_params / 16))
    assert eff["structure"] == "full"  # auto: full for a small model
    assert eff["refine"] == "scoring"  # auto: scoring with the full metric
    lbfgs = NaturalGradientLearner(model, optimizer="lbfgs").effective_options
    assert lbfgs["batch_size"] == opts.BY_NAME["batch_size"].lbfgs_default
    assert "lr" not in lbfgs and "epochs" not in lbfgs  # no effective value where n/a


def test_cli_values_are_checked_by_the_table(capsys):
    for args, phrase in [(["--lr", "-1"], "--lr must be a finite number > 0"),
                         (["--batch-size", "0"], "--batch-size must be >= 1"),
                         (["--half-life", "soon"], "--half-life must be a number"),
                         (["--rewhiten", "weekly"], "unknown re-whitening schedule")]:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["fit", "D", "--out", "R", *args])
        assert exc.value.code == 2 and phrase in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", opts.OPTIMIZER_CHOICES)
def test_model_recommendations_apply_under_every_optimizer(optimizer):
    """Unset options take the model's recommendation, set ones win, whatever the
    optimizer; options that do not apply to it have no effective value.
    """
    mlp = make_model("mlp", 3, hidden=4)
    eff = NaturalGradientLearner(mlp, optimizer=optimizer).effective_options
    for name, value in RECOMMENDED_LEARNER_OPTIONS.items():
        if optimizer in opts.STREAMING_OPTIMIZERS:
            assert eff[name] == opts.BY_NAME[name].parse(value), name
        elif name != "damping":
            assert name not in eff  # lr, schedule, ... do not apply to L-BFGS
    assert eff["damping"] == RECOMMENDED_LEARNER_OPTIONS["damping"]
    mine = NaturalGradientLearner(mlp, optimizer=optimizer, damping=1e-5).effective_options
    assert mine["damping"] == 1e-5
    plain = NaturalGradientLearner(make_model("logistic", 3), optimizer=optimizer)
    assert plain.effective_options["damping"] == opts.BY_NAME["damping"].default
    ising = make_model("ising", 30)  # recommends damping only beyond 300 parameters
    big = NaturalGradientLearner(ising, optimizer=optimizer).effective_options
    assert big["damping"] == ising.learner_defaults["damping"]


def test_cli_mlp_lbfgs_runs_with_the_models_damping(tmp_path, capsys):
    data = tmp_path / "d.zarr"
    assert run_cli(capsys, "make-data", data, "--task", "mlp", "--rows", 2000,
                   "--features", 3, "--chunk-rows", 500)[0] == 0
    run = tmp_path / "run"
    code, summary, err = run_cli(capsys, "fit", data, "--model", "mlp", "--hidden", 4,
                                 "--optimizer", "lbfgs", "--lbfgs-rounds", 1,
                                 "--lbfgs-iters", 3, "--out", run)
    assert code == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["fit_options"]["damping"] == RECOMMENDED_LEARNER_OPTIONS["damping"]
    assert info["options"]["damping"] == RECOMMENDED_LEARNER_OPTIONS["damping"]
    assert info["fit_options"]["optimizer"] == "lbfgs" and info["fit_options"]["hidden"] == 4
    # every option that applies has its effective value recorded
    applies = {o.name for o in opts.OPTIONS if "lbfgs" in o.applies}
    assert applies <= set(info["fit_options"])


@pytest.fixture()
def sgd_run(small_zarr, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", run,
                           "--epochs", 2, "--max-samples", 3000, "--structure", "block")
    assert code == 0, err
    return run


@pytest.mark.parametrize("args, recorded, given", [
    (["--lr", 0.5], "1.0", "0.5"),
    (["--structure", "diagonal"], "'block'", "'diagonal'"),
    (["--optimizer", "adam"], "'sgd'", "'adam'"),
    (["--model", "poisson"], "'logistic'", "'poisson'"),
    (["--w", "y_test"], "unset", "'y_test'"),
    (["--y", "y_test"], "'y'", "'y_test'"),
    (["--rewhiten", "every:100"], "factor:2.0 drift:0.1", "every:100"),
    (["--batch-size", 512], "1024", "512"),
    (["--seed", 3], "0", "3"),
])
def test_resume_refuses_a_changed_option_naming_it(sgd_run, small_zarr, capsys, args,
                                                   recorded, given):
    before = _digest(sgd_run / "checkpoint.npz")
    code, out, err = run_cli(capsys, "fit", small_zarr, "--out", sgd_run, "--resume", *args)
    assert code == 2 and out is None
    assert f"{args[0]} cannot be changed on --resume: the run was fitted with {recorded}, " \
           f"given {given}" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert _digest(sgd_run / "checkpoint.npz") == before


def test_resume_applies_and_records_resumable_options(sgd_run, small_zarr, tmp_path, capsys):
    # the same values restated are no change
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", sgd_run, "--resume",
                                 "--structure", "block", "--lr", 1, "--max-samples", 4000,
                                 "--log-every", 1000)
    assert code == 0, err
    assert 4000 <= summary["samples"] < 4000 + 1024 and summary["interrupted"]
    info = json.loads((sgd_run / "run.json").read_text())["fit_options"]
    assert info["max_samples"] == 4000 and info["log_every"] == 1000 and info["epochs"] == 2
    # left unset on resume: epochs and log_every keep the run's values, max_samples lifts
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", sgd_run, "--resume")
    assert code == 0, err
    assert summary["epochs"] == 2 and summary["samples"] == 10_000 and not summary["interrupted"]
    info = json.loads((sgd_run / "run.json").read_text())["fit_options"]
    assert info["max_samples"] is None and info["log_every"] == 1000
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", sgd_run, "--resume",
                                 "--epochs", 3)
    assert code == 0 and summary["samples"] == 15_000 and summary["epochs"] == 3
    assert json.loads((sgd_run / "run.json").read_text())["fit_options"]["epochs"] == 3
    # the same sequence in one run gives the same parameters
    whole = tmp_path / "whole"
    assert run_cli(capsys, "fit", small_zarr, "--model", "logistic", "--out", whole,
                   "--epochs", 3, "--structure", "block")[0] == 0
    a, b = (load_checkpoint(r / "checkpoint.npz")["theta"] for r in (sgd_run, whole))
    assert_array_equal(a, b)


def test_learner_rejects_unknown_and_misplaced_options():
    model = make_model("logistic", 3)
    with pytest.raises(TypeError, match="unknown option: learning_rate"):
        NaturalGradientLearner(model, learning_rate=0.1)
    with pytest.raises(ValueError, match="--lbfgs-rounds applies only with --optimizer lbfgs"):
        NaturalGradientLearner(model, lbfgs_rounds=3)
    with pytest.raises(ValueError, match="--lr does not apply to --optimizer lbfgs"):
        NaturalGradientLearner(model, optimizer="lbfgs", lr=0.5)


def test_signature_is_derived_from_the_table():
    import inspect

    params = inspect.signature(NaturalGradientLearner).parameters
    assert list(params)[1:] == list(opts.LEARNER_OPTIONS)
    assert all(params[n].default == opts.BY_NAME[n].default for n in opts.LEARNER_OPTIONS)


def test_every_state_field_round_trips_through_a_checkpoint(tmp_path):
    """The checkpoint layout derives from LearnerState's fields: a field with a value of
    its own comes back from disk equal (a new field needs no other code).
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 3))
    y = (X[:, 0] > 0).astype(float)
    learner = NaturalGradientLearner(make_model("logistic", 3), optimizer="adam",
                                     average=True).fit((X, y), epochs=2)
    state = learner.state
    state.rounds, state.evaluations, state.converged = 3, 5, True
    state.last_round = {"event": "round", "round": 3}
    save_checkpoint(tmp_path / "c.npz", learner.state_dict())
    back = NaturalGradientLearner.from_state_dict(load_checkpoint(tmp_path / "c.npz")).state
    for f in dataclasses.fields(LearnerState):
        if f.metadata["key"] is None:
            continue
        a, b = getattr(state, f.name), getattr(back, f.name)
        if f.name == "rng":
            assert a.bit_generator.state == b.bit_generator.state
        elif hasattr(a, "state_dict"):  # whitener, running metric
            for k, v in b.state_dict().items():
                assert np.array_equal(v, a.state_dict()[k]) if isinstance(v, np.ndarray) \
                    else v == a.state_dict()[k], (f.name, k)
        elif hasattr(a, "to_dict"):  # (values may be arrays: the chunk digests' map)
            da, db = a.to_dict(), b.to_dict()
            assert da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da), \
                f.name
        elif isinstance(a, dict):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        elif isinstance(a, np.ndarray):
            assert_array_equal(a, b)
        else:
            assert a == b or (a != a and b != b), f.name  # NaN equals NaN here


def test_checkpoints_from_before_the_table_still_load():
    """A state whose options use the earlier layout (the optimizer's options nested under
    ``options["optimizer"]``, no ``fit_options``) rebuilds the same learner.
    """
    model = make_model("mlp", 3, hidden=4)
    for optimizer in ("momentum", "lbfgs"):
        learner = NaturalGradientLearner(model, optimizer=optimizer)
        state = learner.state_dict()
        legacy = {k: v for k, v in state.items() if k != "fit_options"}
        again = NaturalGradientLearner.from_state_dict(legacy)
        assert again.effective_options == learner.effective_options
        assert isinstance(again, type(learner))


def test_cli_main_maps_option_errors_to_exit_2(small_zarr, tmp_path, capsys):
    code, _, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r")
    assert code == 2 and "--model is required" in err
    assert main(["fit", str(small_zarr), "--out", str(tmp_path / "r"), "--model", "logistic",
                 "--window", "2"]) == 2


def test_options_that_do_not_apply_are_refused_even_at_their_default(small_zarr, tmp_path,
                                                                     capsys):
    lb = ["--model", "logistic", "--optimizer", "lbfgs", "--lbfgs-rounds", 1]
    for i, (args, phrase) in enumerate([
            ([*lb, "--epochs", 1], "--epochs does not apply to --optimizer lbfgs"),
            ([*lb, "--half-life", "auto"], "--half-life does not apply"),
            ([*lb, "--rewhiten", "auto"], "--rewhiten does not apply"),
            (["--model", "logistic", "--lbfgs-rounds", 10], "--lbfgs-rounds applies only")]):
        code, out, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / f"r{i}", *args)
        assert code == 2 and out is None and phrase in err, (args, err)
    run = tmp_path / "lbfgs"
    assert run_cli(capsys, "fit", small_zarr, "--out", run, *lb)[0] == 0
    code, _, err = run_cli(capsys, "fit", small_zarr, "--out", run, "--resume", "--epochs", 1)
    assert code == 2 and "--epochs does not apply" in err and "Traceback" not in err


def test_repeating_the_original_command_with_resume_is_accepted(tmp_path, capsys):
    for task, args in [("gaussian-mean", ["--mixing", "A", "--y", "y"]),
                       ("ising", ["--y", "y", "--hidden", 5])]:
        data = tmp_path / f"{task}.zarr"
        assert run_cli(capsys, "make-data", data, "--task", task, "--rows", 2000,
                       "--features", 2 if task == "gaussian-mean" else 4,
                       "--chunk-rows", 500)[0] == 0
        run = tmp_path / task
        command = ["fit", data, "--model", task, "--out", run, "--epochs", 1, *args]
        assert run_cli(capsys, *command)[0] == 0
        code, summary, err = run_cli(capsys, *command, "--resume", "--epochs", 2)
        assert code == 0 and summary["epochs"] == 2, err
        info = json.loads((run / "run.json").read_text())["fit_options"]
        assert info["hidden"] is None and info["y"] is None  # not read by these models


def test_fit_run_progress_from_python(small_zarr, tmp_path, capsys):
    from natgrad_stream.app.runs import fit_run

    fit_run(small_zarr, tmp_path / "quiet", model="logistic")
    assert "rows/s" not in capsys.readouterr().err  # no progress line unless asked
    fit_run(small_zarr, tmp_path / "loud", model="logistic", progress=True)
    assert "rows/s" in capsys.readouterr().err


def test_one_name_per_option_across_flag_toml_estimator_and_run_json(small_zarr, tmp_path,
                                                                       capsys):
    """An option has one name: its flag is ``--`` + the name with ``-`` for ``_``, its TOML
    key and Python keyword are the name, the scikit-learn estimators' parameters are table
    names (``max_iter``, ``C`` and ``alpha`` excepted: scikit-learn's names for the cap on
    passes, ``epochs``, and for the penalty, which sets ``l2``; ``class_weight`` and
    ``warm_start`` are scikit-learn's own, no learner option), and ``run.json`` records it
    under the name.
    """
    import inspect

    from natgrad_stream.sklearn import (
        NaturalGradientClassifier,
        NaturalGradientPoissonRegressor,
        NaturalGradientRegressor,
    )

    for opt in opts.OPTIONS:
        if opt.cli_flag is not None:
            assert opt.cli_flag == "--" + opt.name.replace("_", "-"), opt.name
    for cls in (NaturalGradientClassifier, NaturalGradientRegressor,
                NaturalGradientPoissonRegressor):
        names = set(inspect.signature(cls).parameters) - {"max_iter", "C", "alpha",
                                                            "class_weight", "warm_start"}
        assert names <= set(opts.BY_NAME), (cls.__name__, names - set(opts.BY_NAME))
    # TOML keys are the names, with the meaning of the flag of the same name
    config = tmp_path / "run.toml"
    config.write_text('model = "logistic"\ntol = 1e-8\nepochs = 3\n')
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r",
                                 "--config", config)
    assert code == 0, err
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    recorded = run["fit_options"] if "fit_options" in run else run["options"]
    assert recorded["tol"] == 1e-8
    assert set(recorded) <= set(opts.BY_NAME), set(recorded) - set(opts.BY_NAME)
    config.write_text('model = "logistic"\noptimizer = "lbfgs"\nlbfgs_tol = 1e-9\n'
                      'lbfgs_rounds = 2\n')
    code, summary, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "l",
                                 "--config", config)
    assert code == 0, err
    run = json.loads((tmp_path / "l" / "run.json").read_text())
    recorded = run["fit_options"] if "fit_options" in run else run["options"]
    assert recorded["lbfgs_tol"] == 1e-9 and recorded["lbfgs_rounds"] == 2
    assert set(recorded) <= set(opts.BY_NAME)
    code, _, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "bad",
                           "--model", "logistic", "--optimizer", "lbfgs", "--tol", "1e-8")
    assert code == 2 and "--lbfgs-tol" in err  # the message names the L-BFGS tolerance


def test_old_keyword_names_still_work_with_a_deprecation_warning():
    model = make_model("logistic", 3)
    with pytest.warns(DeprecationWarning, match="decrement_tol is deprecated: it is now tol"):
        learner = NaturalGradientLearner(model, decrement_tol=1e-9)
    assert learner.effective_options["tol"] == 1e-9
    with pytest.warns(DeprecationWarning) as caught:
        lbfgs = NaturalGradientLearner(model, optimizer="lbfgs", rounds=3, iters=7)
    assert sorted(str(w.message) for w in caught) == [
        "the keyword iters is deprecated: it is now lbfgs_iters",
        "the keyword rounds is deprecated: it is now lbfgs_rounds"]
    assert lbfgs.effective_options["lbfgs_rounds"] == 3
    assert lbfgs.effective_options["lbfgs_iters"] == 7
    with pytest.raises(ValueError, match="give lbfgs_rounds only"):
        NaturalGradientLearner(model, optimizer="lbfgs", rounds=3, lbfgs_rounds=3)


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_runs_recorded_under_the_old_names_load_and_resume(small_zarr, tmp_path, capsys,
                                                           optimizer):
    """Checkpoints written before one name per option (``decrement_tol``; L-BFGS ``rounds``,
    ``iters``, ``tol``, ``gtol``, ``memory``) load with the same effective options.
    """
    from natgrad_stream.app.runs import CHECKPOINT

    code, _, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r", "--model",
                           "logistic", "--optimizer", optimizer,
                           *(["--lbfgs-rounds", 1, "--lbfgs-tol", 1e-7] if optimizer == "lbfgs"
                             else ["--tol", 1e-9]))
    assert code == 0, err
    path = tmp_path / "r" / CHECKPOINT
    state = load_checkpoint(path)
    new = NaturalGradientLearner.from_state_dict(state).effective_options
    old_names = {v: k for k, v in opts.RENAMED.items()} | {"lbfgs_tol": "tol"}
    for record in (state["fit_options"], state["run"]["fit_options"]):
        for key in list(record):
            if key in old_names:
                record[old_names[key]] = record.pop(key)
    assert NaturalGradientLearner.from_state_dict(state).effective_options == new
    save_checkpoint(path, state)
    for p in (tmp_path / "r").glob("checkpoint.[0-9]*.npz"):
        p.unlink()
    code, _, err = run_cli(capsys, "fit", small_zarr, "--out", tmp_path / "r", "--resume",
                           *(["--lbfgs-rounds", 2] if optimizer == "lbfgs"
                             else ["--epochs", 2]))
    assert code == 0, err


def test_structure_auto_settles_on_the_data():
    """Beyond AUTO_FULL_MAX_PARAMS a GLM keeps the full metric (its Hessian: scoring
    converges in a handful of passes) on dense data of AUTO_FULL_MIN_ROWS_PER_PARAM rows per
    parameter; fewer rows take the diagonal plus a low-rank sketch (a model with fast
    metric-vector products on dense data), sparse data and models whose metric is no
    Hessian the diagonal. Measured (see _constants): 100,000 × 3,000 dense, one pass 1.35%
    above the optimum with the full metric against 50% with the diagonal (4.6% low-rank).
    """
    from natgrad_stream._constants import (
        AUTO_FULL_HESSIAN_MAX_PARAMS,
        AUTO_FULL_MAX_PARAMS,
        AUTO_FULL_MIN_ROWS_PER_PARAM,
    )

    glm = make_model("logistic", AUTO_FULL_MAX_PARAMS + 100)
    P = glm.n_params
    enough = AUTO_FULL_MIN_ROWS_PER_PARAM * P
    assert opts.auto_structure_for_data(glm, enough, sparse=False) == "full"
    assert opts.auto_structure_for_data(glm, enough - 1, sparse=False) == "lowrank"
    assert opts.auto_structure_for_data(glm, enough, sparse=True) == "diagonal"
    assert opts.auto_structure_for_data(glm, None, sparse=False) == "lowrank"
    top = make_model("logistic", AUTO_FULL_HESSIAN_MAX_PARAMS)  # P = max + 1
    assert opts.auto_structure_for_data(top, 10**9, sparse=False) == "lowrank"
    ising = make_model("ising", 80)  # P = 3,240, no Hessian metric
    assert opts.auto_structure_for_data(ising, 10**9, sparse=False) == "diagonal"
    small = make_model("logistic", 5)
    assert opts.auto_structure_for_data(small, 10, sparse=True) == "full"


def test_a_fit_settles_structure_auto_as_if_given(monkeypatch):
    """The same thresholds, scaled down: the fit's structure, refine and result are those of
    a learner given the structure it settled on; a given θ0 is kept; a given structure
    stays.
    """
    monkeypatch.setattr(opts, "AUTO_FULL_MAX_PARAMS", 10)
    monkeypatch.setattr(opts, "AUTO_FULL_HESSIAN_MAX_PARAMS", 40)
    rng = np.random.default_rng(0)
    d = 15  # P = 16: diagonal before the data, full on 20 rows per parameter
    X = rng.standard_normal((20 * (d + 1), d)) @ rng.standard_normal((d, d))
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-X @ rng.standard_normal(d) / 4))) * 1.0
    lr = NaturalGradientLearner(make_model("logistic", d))
    assert lr.structure == "diagonal" and lr.effective_options["refine"] == "newton-cg"
    lr.fit((X, y), epochs=3)
    assert lr.structure == "full" and lr.effective_options["refine"] == "scoring"
    given = NaturalGradientLearner(make_model("logistic", d), structure="full").fit(
        (X, y), epochs=3)
    np.testing.assert_array_equal(lr.theta, given.theta)
    assert lr.options()["structure"] == "full"
    few = NaturalGradientLearner(make_model("logistic", d)).fit((X[:100], y[:100]), epochs=2)
    assert few.structure == "lowrank"  # (dense rows)
    kept = NaturalGradientLearner(make_model("logistic", d), structure="diagonal")
    assert not kept.settle_structure(as_source((X, y)))
    theta0 = np.full(d + 1, 0.01)
    warm = NaturalGradientLearner(make_model("logistic", d)).reset(theta0)
    assert warm.settle_structure(as_source((X, y))) and warm.structure == "full"
    np.testing.assert_array_equal(warm.theta, theta0)


def test_run_json_records_the_structure_a_cli_fit_settled_on(settling_logistic, tmp_path,
                                                             capsys):
    """run.json's ``fit_options`` (the effective value of every fit option) name the
    structure and refine that structure auto settled on, as its ``options`` do.
    """
    from .conftest import write_group

    X, y = settling_logistic
    write_group(tmp_path / "d.zarr", X=X, y=y)
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "d.zarr"), "--model", "logistic", "--epochs", "2",
                 "--out", str(run), "--progress", "never"]) == 0, capsys.readouterr()[1]
    info = json.loads((run / "run.json").read_text())
    assert info["options"]["structure"] == "full"
    assert info["fit_options"]["structure"] == "full"
    assert info["fit_options"]["refine"] == "scoring"


def test_structure_auto_is_full_up_to_the_threshold_then_diagonal_with_lbfgs_passes():
    from natgrad_stream._constants import AUTO_FULL_MAX_PARAMS

    small = NaturalGradientLearner(make_model("logistic", AUTO_FULL_MAX_PARAMS - 1))
    assert small.structure == "full" and small.effective_options["refine"] == "scoring"
    wide = NaturalGradientLearner(make_model("logistic", AUTO_FULL_MAX_PARAMS))
    assert wide.structure == "diagonal" and wide.effective_options["refine"] == "newton-cg"
    ising = NaturalGradientLearner(make_model("ising", 80))  # P > 2,048, no Hessian metric
    assert ising.structure == "diagonal" and ising.effective_options["refine"] == "lbfgs"
    forced = NaturalGradientLearner(make_model("logistic", AUTO_FULL_MAX_PARAMS),
                                    structure="full")
    assert forced.structure == "full"
    changes, refused = opts.check_resume({"structure": "full"}, {"structure": "auto"})
    assert changes == {} and refused == []


def test_a_round_metric_without_lbfgs_rounds_is_refused(tmp_path, capsys):
    """``round_metric`` whitens L-BFGS rounds: asked of a run that takes none (a GLM
    refined by scoring, a streaming refine) it would change nothing, so it is refused in
    one line (exit 2); recorded by a checkpoint (the model's own choice) it is not.
    """
    with pytest.raises(opts.OptionError, match="round_metric .*L-BFGS"):
        NaturalGradientLearner(make_model("logistic", 3), round_metric="empirical")
    with pytest.raises(opts.OptionError, match="round_metric .*L-BFGS"):
        NaturalGradientLearner(make_model("mlp", 3, hidden=2), round_metric="empirical",
                               refine="stream")
    NaturalGradientLearner(make_model("logistic", 3), round_metric="empirical",
                           refine="lbfgs")
    NaturalGradientLearner(make_model("logistic", 3), round_metric="empirical",
                           optimizer="lbfgs")
    for model, kw in ((make_model("logistic", 3), {}),
                      (make_model("mlp", 3, hidden=2), {"refine": "stream"})):
        lr = NaturalGradientLearner(model, **kw)
        again = NaturalGradientLearner.from_state_dict(lr.state_dict())
        assert again.round_metric == lr.round_metric
    from .conftest import write_group

    rng = np.random.default_rng(0)
    write_group(tmp_path / "d.zarr", X=rng.standard_normal((200, 3)),
                y=(rng.random(200) < 0.5) * 1.0)
    code, _, err = run_cli(capsys, "fit", tmp_path / "d.zarr", "--model", "logistic",
                           "--round-metric", "empirical", "--out", tmp_path / "r")
    assert code == 2 and "round_metric" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoint.npz").exists()
