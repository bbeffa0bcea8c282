"""Run directories: what ``natgrad-stream fit`` writes and ``evaluate``/``params`` read.

Layout of ``RUN/``:

``checkpoint.npz``
    The learner's full state (:mod:`natgrad_stream.training.checkpoint`), written atomically
    with a checksum of every array at the end of ``fit``, every ``checkpoint_every`` samples
    or ``checkpoint_seconds`` seconds, and on a graceful stop; the ``keep_checkpoints − 1``
    before it as ``checkpoint.1.npz``, … (``--resume``, ``params`` and ``evaluate`` fall
    back to them, saying so). Each records the run's identity (``run/run_id``) and the
    digest of the checkpoint it continues from; a checkpoint of another run is refused.
``.lock``
    Held (``flock``) by the one process fitting in the directory, with its PID.
``metrics.jsonl``
    Append-only training log (:class:`~natgrad_stream.training.callbacks.MetricsLogger`).
``run.json``
    Human-readable record: the run's identity (``run_id``, random, made when the run
    starts; written then, the rest at the end), data, array names, model, the learner's
    options (``options``, the optimizer's own under ``optimizer``), the effective value of
    every fit option (``fit_options``, by the names of
    :data:`natgrad_stream.training.options.OPTIONS`) and the last summary.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from natgrad_stream._files import check_zarr_metadata, open_fd
from natgrad_stream.app.evaluate import binary_auc, evaluate
from natgrad_stream.data import FollowSource, as_source
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.data.identity import compare_identity, data_identity
from natgrad_stream.data.tables import is_table_path
from natgrad_stream.errors import CheckpointError, OptionError, RunDirectoryError
from natgrad_stream.models import MODELS, make_model, model_from_config
from natgrad_stream.models.penalty import L2Penalty
from natgrad_stream.training import options as opts
from natgrad_stream.training.callbacks import (
    CheckpointEvery,
    MetricsLogger,
    ProgressLines,
    TqdmProgress,
    Validation,
    json_clean,
)
from natgrad_stream.training.checkpoint import (
    Checkpoint,
    LegacyCheckpointError,
    checkpoint_candidates,
    open_regular,
    read_latest_checkpoint,
    remove_rotated,
    remove_stale_temporaries,
)
from natgrad_stream.training.learner import NaturalGradientLearner, make_learner

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
RUN_JSON = "run.json"
LOCK = ".lock"
#: The key of the run's identity in ``run.json`` and in a checkpoint's ``run`` record.
RUN_ID = "run_id"
#: The command-line flag that lets a legacy checkpoint (no run identity) be used.
ALLOW_LEGACY_FLAG = "--allow-legacy-checkpoint"
#: Model options as they appear in a model's ``config()``, and the model each one is for.
_MODEL_CONFIG_KEYS = {"model": "name", "classes": "n_classes", "hidden": "hidden",
                      "sharpness": "sharpness", "density": "density"}
_MODEL_OPTION_OWNER = {"mixing": "gaussian-mean", "classes": "softmax", "hidden": "mlp",
                       "sharpness": "ica", "density": "ica"}


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(json_clean(obj), fh, indent=2, default=lambda v: v.tolist())
            fh.write("\n")
        os.replace(tmp, path)  # replaces a symbolic link, never writes through it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold the run directory's lock: one fitting process per directory.

    The lock is an ``flock`` on ``RUN/.lock``, which the kernel releases when its holder
    dies, so a lock left by a killed process is simply taken over.

    Raises
    ------
    RunDirectoryError
        When another process holds it (its PID is named).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    try:  # a FIFO or device in its place is refused, never waited on
        fd = open_fd(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW)
    except OSError as exc:
        raise RunDirectoryError(f"cannot open the lock {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryError(f"{run_dir} is in use by process {holder} (lock {path}); "
                                    "one fit per run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for stale in (*remove_stale_temporaries(run_dir), *run_dir.glob(".run-*.json.tmp")):
            Path(stale).unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def load_learner(run_dir, *, allow_legacy: bool = False,
                 **overrides) -> tuple[NaturalGradientLearner, dict]:
    """Rebuild the learner saved in ``run_dir``; returns ``(learner, run_info)``.

    ``overrides`` replace recorded learner options (resumable ones, e.g. ``lbfgs_rounds``);
    ``allow_legacy`` lets a legacy checkpoint (no run identity) be used.
    """
    state = _load_state(run_dir, allow_legacy=allow_legacy)
    return NaturalGradientLearner.from_state_dict(state, **overrides), state.get("run", {})


def _open_group(data):
    """The Zarr group behind ``data`` when it is a path to one, else None."""
    if not isinstance(data, str | os.PathLike):
        return data if hasattr(data, "array_keys") else None
    import zarr

    check_zarr_metadata(data)  # a FIFO or device would hang zarr's read
    try:
        return zarr.open_group(str(data), mode="r")
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - not a readable group: opening the data says why
        return None


def _split(given: dict) -> dict[str, dict]:
    """Given options by group (data, model, learner, run)."""
    out: dict[str, dict] = {opts.DATA: {}, opts.MODEL: {}, opts.LEARNER: {}, opts.RUN: {}}
    for name, value in given.items():
        out[opts.BY_NAME[name].group][name] = value
    return out


def _model_options(model, given: dict) -> dict:
    """Effective model options: the model's configuration where it holds them, the value
    given otherwise, None for options this model does not take.
    """
    config = model.config()
    out = {}
    for name in opts.MODEL_OPTIONS:
        if _MODEL_OPTION_OWNER.get(name, model.name) != model.name:
            out[name] = None
        elif name in _MODEL_CONFIG_KEYS and _MODEL_CONFIG_KEYS[name] in config:
            out[name] = config[_MODEL_CONFIG_KEYS[name]]
        else:
            out[name] = given.get(name)
    return out


def _ignored(name: str, model) -> bool:
    """True for a data or model option that ``model`` does not read."""
    if name == "y":
        return not model.requires_targets
    return _MODEL_OPTION_OWNER.get(name, model.name) != model.name


def fit_run(data, run_dir, *, resume: bool = False, overwrite: bool = False,
            stop_handler=None, learner_options: dict | None = None,
            model_options: dict | None = None, config: str | None = None,
            allow_legacy: bool = False, **options) -> dict:
    """Fit (or resume) a run in ``run_dir``; returns the summary dict.

    Parameters
    ----------
    data : path, zarr.Group or arrays
    run_dir : path
    resume : bool
        Continue the run in ``run_dir``. Options given are compared with the run's
        recorded ones: resumable options (``epochs``, ``rounds``, ``max_samples``,
        ``log_every``, ``checkpoint_every``, ``progress``) apply and are recorded; any
        other that differs raises :class:`OptionError` naming it, its recorded value and
        the one given.
    overwrite : bool
        Replace a run already in ``run_dir`` (only once the new one has finished).
    stop_handler : callable, optional
        Called with the learner before fitting (the CLI's signal handler attaches).
    config : str, optional
        The config file the options came from (recorded in ``run.json``).
    allow_legacy : bool
        Let ``resume`` continue from a legacy checkpoint (one written before checkpoints
        recorded their run); the run is then given an identity.
    **options
        Fit options by the names of :data:`natgrad_stream.training.options.OPTIONS`
        (``model``, ``x``, ``epochs``, ``optimizer``, ``lr``, ...); unset ones take the
        model's recommendation or the table's default. ``learner_options`` and
        ``model_options`` are dicts of more of them (the earlier signature).

    The data are opened and validated before anything is written. On an error the
    checkpoint is left as it was and the log records the error. A directory holding no
    checkpoint holds no run (at most the log of a fit that failed before saving one): a
    new fit uses it without ``overwrite`` (replacing that log), and ``resume`` refuses it
    saying there is nothing to resume. An overwriting run writes
    its log to ``metrics.jsonl.partial`` and its checkpoint only at the end.
    """
    options = {**(learner_options or {}), **(model_options or {}), **options}
    progress = options.get("progress", False)  # from Python: no progress line unless asked
    if isinstance(progress, bool):
        options["progress"] = "always" if progress else "never"
    options = opts.upgrade_keywords(options)
    opts.check_known(options, opts.BY_NAME)
    given = {k: opts.BY_NAME[k].parse(v) for k, v in opts.explicit(options).items()}
    run_dir = Path(run_dir)
    if not resume:  # validate what can be before creating the directory
        if given.get("model") is None:
            raise OptionError("--model is required for a new run")
        _refuse_existing_run(run_dir, overwrite)
    elif not checkpoint_files(run_dir):
        if (run_dir / METRICS).exists():  # a fit that failed before it saved anything
            raise RunDirectoryError(
                f"{run_dir} holds no checkpoint: the fit that wrote it stopped before saving "
                f"one (its {METRICS} says why), so there is nothing to resume; run the fit "
                "again without --resume")
        _load_state(run_dir)  # the clear "holds no checkpoint" error, before locking
    created = not run_dir.exists()
    held = False  # a fit that lost the lock leaves the directory to the one that holds it
    try:
        with run_lock(run_dir):
            held = True
            try:
                return _fit_locked(data, run_dir, given, resume, overwrite, stop_handler,
                                   config, allow_legacy)
            except BaseException:
                if not resume and not checkpoint_files(run_dir):  # a new run that saved
                    with contextlib.suppress(OSError, ValueError):  # nothing: no identity
                        _forget_unsaved_run(run_dir)
                raise
    except BaseException:
        if created and held:  # a new run that failed leaves no directory (if it wrote none)
            with contextlib.suppress(OSError):
                (run_dir / LOCK).unlink()
                run_dir.rmdir()
        raise


def checkpoint_files(run_dir) -> list[str]:
    """Names of the checkpoints in ``run_dir`` (``checkpoint.npz`` first; whatever file
    holds such a name, even a damaged or special one); empty when nothing learned was
    saved there.
    """
    return [p.name for p in checkpoint_candidates(Path(run_dir) / CHECKPOINT)
            if os.path.lexists(p)]


def _forget_unsaved_run(run_dir: Path) -> None:
    """Remove the ``run.json`` a new run wrote at its start when it saved no checkpoint
    (its log stays: it says why the fit failed).
    """
    path = run_dir / RUN_JSON
    if path.is_file() and not path.is_symlink():
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        if isinstance(record, dict) and record.get("summary", 0) is None:
            path.unlink()


def _refuse_existing_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse a new run in a directory holding a checkpoint, unless ``overwrite``.

    A directory with no checkpoint holds nothing learned (at most the log of a fit that
    failed before saving one): a new run may use it.
    """
    held = checkpoint_files(run_dir)
    if held and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(held)}); pass --resume to "
            "continue it or --overwrite to replace it")


def _fit_locked(data, run_dir: Path, given: dict, resume: bool, overwrite: bool,
                stop_handler, config: str | None = None, allow_legacy: bool = False) -> dict:
    ckpt, log_path = run_dir / CHECKPOINT, run_dir / METRICS
    predecessor = None
    if resume:
        learner, info, fit_options, predecessor = _resume(run_dir, data, given, allow_legacy)
    else:
        learner, info, fit_options = _new_run(run_dir, data, given, overwrite)
    run = {k: fit_options[k] for k in opts.RUN_OPTIONS if k in fit_options}
    x, y, w = (fit_options[k] for k in ("x", "y", "w"))
    x = _table_x(fit_options)
    y = y if learner.model.requires_targets else None
    if fit_options.get("follow"):
        source = FollowSource(data, x=x, y=y, w=w, poll_seconds=run["poll_seconds"],
                              idle_timeout=run["idle_timeout"],
                              shuffle_window=fit_options.get("shuffle_window"),
                              should_stop=lambda: learner._stop_requested)
    else:
        source = as_source(data, x=x, y=y, w=w)
    if source.n_features != learner.model.n_features:
        raise RunDirectoryError(f"data have {source.n_features} features; the run was fitted "
                                f"on {learner.model.n_features}")
    if learner.settle_structure(source):  # --structure auto on these data, before run.json
        fit_options = {**fit_options, **learner.effective_options}  # (its refine too)
    # An overwriting run logs beside the old run and replaces it only once it has finished,
    # so a failed attempt loses nothing that was there.
    replacing = not resume and overwrite and (ckpt.exists() or log_path.exists())
    new_log = run_dir / (METRICS + ".partial") if replacing else log_path
    if replacing:
        new_log.unlink(missing_ok=True)
    if config is not None:
        info["config"] = str(Path(config).resolve())
    info = {**info, "fit_options": fit_options,
            "data_identity": data_identity(data, (x, y if learner.model.requires_targets
                                                  else None, w))}
    names = getattr(source, "class_names", None)
    if names is not None and learner.model.name == "softmax":  # a categorical target's
        info["class_names"] = list(names)
    columns = getattr(source, "feature_names", None)
    if columns is not None:  # a table's feature columns (one-hot: column=value), in order
        info["feature_names"] = [str(c) for c in columns]
    # the checkpoint first: the log's end record follows a successful final write
    callbacks = [CheckpointEvery(ckpt, every=None if replacing else run.get("checkpoint_every"),
                                 seconds=None if replacing else run["checkpoint_seconds"],
                                 per_round=not replacing,
                                 keep=1 if replacing else run["keep_checkpoints"],
                                 extra=info, on_cluster_loss=not replacing,
                                 predecessor=predecessor),
                 MetricsLogger(new_log, every=run["log_every"])]
    val = _validation(data, fit_options, run, learner, callbacks[1])
    if val is not None:  # after the checkpoint, before the log's end record
        callbacks.insert(1, val)
    progress = run["progress"]
    if progress != "never":
        if sys.stderr.isatty():  # a bar on a terminal, else newline-terminated lines
            callbacks.append(TqdmProgress())
        else:
            callbacks.append(ProgressLines(interval=run["progress_seconds"],
                                           eager=progress == "always"))
    if stop_handler is not None:
        stop_handler(learner)
    if not replacing:  # the run's identity, on disk before its first checkpoint
        _record_identity(run_dir, info, learner, resume)
    if run.get("dask") is not None or run.get("dask_workers") is not None:
        if fit_options.get("follow"):
            raise OptionError("--follow reads rows as they arrive, in one process: it does "
                              "not combine with --dask or --dask-workers")
        from natgrad_stream.distributed import dask_client
        from natgrad_stream.distributed.cluster import require_distributed

        # the command reports a lost cluster in one line: Dask's own logs (tracebacks of
        # its reconnection attempts) would bury it
        require_distributed()
        for name in list(logging.root.manager.loggerDict):
            if name.split(".")[0] in ("distributed", "tornado"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        with dask_client(run.get("dask"), run.get("dask_workers")) as client:
            learner.fit(data, epochs=run.get("epochs"), callbacks=callbacks,
                        max_samples=run["max_samples"], x=x, y=y, w=w, client=client)
    else:
        learner.fit(source, epochs=run.get("epochs"), callbacks=callbacks,
                    max_samples=run["max_samples"])
    if replacing:  # the replaced run's log and older checkpoints go
        os.replace(new_log, log_path)
        remove_rotated(ckpt)
    summary = learner.result.to_dict()
    if learner.dask_traffic is not None:
        summary["dask"] = learner.dask_traffic
    _write_json_atomic(run_dir / RUN_JSON, {**info, "model": learner.model.config(),
                                            "options": learner.options(), "summary": summary})
    return summary


def _validation(data, fit_options: dict, run: dict, learner, log) -> Validation | None:
    """The held-out evaluation callback of ``--val``/``--val-x``/``--val-y``, or None."""
    val, vx, vy = run.get("val"), run.get("val_x"), run.get("val_y")
    if val is None and vx is None and vy is None:
        return None
    source = val if val is not None else data
    x = vx if vx is not None else _table_x(fit_options)
    y = vy if vy is not None else fit_options["y"]
    if val is None and x == _table_x(fit_options):
        raise OptionError("--val-x alone names held-out arrays in the training store; give "
                          "it (and --val-y), or --val DATA")
    requires_y = learner.model.requires_targets
    held_out = as_source(source, x=x, y=y if requires_y else None)  # checked before fitting
    if held_out.n_features != learner.model.n_features:
        raise OptionError(f"held-out array {x!r} has {held_out.n_features} features; the "
                          f"model has {learner.model.n_features}")

    auc = learner.model.name == "logistic"  # a binary classifier: its ROC AUC too

    def measure(lr):
        out = evaluate(lr.model, lr.theta, source, x=x, y=y if requires_y else None)
        if auc:
            out["auc"] = binary_auc(lr.model, lr.theta, source, x=x, y=y)
        return out

    every = run.get("val_every") or run["log_every"]
    return Validation(measure, every=every, log=log)


def _new_run(run_dir: Path, data, given: dict, overwrite: bool):
    _refuse_existing_run(run_dir, overwrite)  # again under the lock: another fit may have
    # finished; the log of a fit that failed before saving anything is not this run's
    if not overwrite and (run_dir / METRICS).exists():
        logging.getLogger("natgrad_stream").info(
            "%s: replacing the log of an earlier fit that saved no checkpoint", run_dir)
        (run_dir / METRICS).unlink()
    groups = _split(given)
    name = given["model"]
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    data_opts = {k: given.get(k, opts.BY_NAME[k].default) for k in opts.DATA_OPTIONS}
    requires_y = MODELS[name].requires_targets
    if not requires_y:
        data_opts["y"] = None
    if data_opts["follow"] and is_table_path(data):
        raise OptionError(f"--follow reads rows appended to a Zarr store, not a table "
                          f"({data}): copy it first ('natgrad-stream convert SRC OUT.zarr')")
    opener = FollowSource if data_opts["follow"] else as_source  # follow: committed rows
    source = opener(data, x=_table_x(data_opts), y=data_opts["y"], w=data_opts["w"])
    model_given = {k: v for k, v in groups[opts.MODEL].items() if k != "model"}
    model_given = {k: model_given.get(k) for k in opts.MODEL_OPTIONS if k != "model"}
    model = make_model(name, source.n_features,
                       **MODELS[name].options_from_data(_open_group(data), source, model_given))
    learner = make_learner(model, **groups[opts.LEARNER])
    optimizer = learner.effective_options["optimizer"]
    run = opts.resolve(groups[opts.RUN], model, names=opts.RUN_OPTIONS, optimizer=optimizer)
    opts.resolve(groups[opts.DATA], model, names=opts.DATA_OPTIONS, optimizer=optimizer)
    if data_opts["follow"] and run["epochs"] not in (None, 1):
        raise OptionError("--epochs does not apply to --follow (each row is learned once, "
                          "as it arrives)")
    if data_opts["shuffle_window"] is not None and not data_opts["follow"]:
        raise OptionError("--shuffle-window applies only with --follow")
    fit_options = {**data_opts, **_model_options(model, given), **learner.effective_options,
                   **run}
    info = {RUN_ID: new_run_id(), "data": str(data), "x": _table_x(data_opts),
            "y": data_opts["y"],
            "w": data_opts["w"],
            "given_options": {k: v for k, v in given.items()
                              if opts.BY_NAME[k].group in (opts.DATA, opts.MODEL)}}
    return learner, info, fit_options


def _table_x(options: dict):
    """The feature spec of a run's data options: ``x`` with the encoding of ``one_hot`` or
    ``hash_bits`` (tables) appended.
    """
    from natgrad_stream.data.table_encoding import encoded_x

    return encoded_x(options["x"], one_hot=bool(options.get("one_hot")),
                     hash_bits=options.get("hash_bits"))


def _resume(run_dir: Path, data, given: dict, allow_legacy: bool = False):
    found = _load_checkpoint(run_dir, allow_legacy=allow_legacy, set_damaged_aside=True)
    state = found.state
    info = dict(state.get("run", {}))
    if info.get(RUN_ID) is None:  # a legacy checkpoint, allowed: the run gets an identity
        info[RUN_ID] = _recorded_run_id(run_dir, warn=False) or new_run_id()
    info.pop("fit_options", None)
    recorded_data = info.pop("data_identity", None)
    model = model_from_config(state["model"])
    recorded = _recorded_fit_options(state, model)
    groups = _split(given)
    optimizer = recorded["optimizer"]
    # the optimizer first: the other learner options are read in its context
    _, refused = opts.check_resume(recorded, {k: given[k] for k in ("optimizer",) if k in given})
    if refused:
        raise OptionError(f"{refused[0]} (run in {run_dir})")
    recorded_learner = {k: recorded[k] for k in opts.LEARNER_OPTIONS if k in recorded}
    # given options resolved in the run's context, compared by their effective values
    learner_now = opts.resolve({**recorded_learner, **groups[opts.LEARNER]}, model)
    effective_given = {k: learner_now.get(k, v) for k, v in groups[opts.LEARNER].items()}
    run_now = opts.resolve(groups[opts.RUN], model, names=opts.RUN_OPTIONS,
                           optimizer=optimizer)
    effective_given.update({k: run_now[k] for k in groups[opts.RUN]})
    for name, value in {**groups[opts.DATA], **groups[opts.MODEL]}.items():
        if not _ignored(name, model):
            effective_given[name] = value
    changes, refused = opts.check_resume(recorded, effective_given,
                                         also=info.get("given_options", {}))
    if refused:
        raise OptionError("; ".join(refused) + f" (run in {run_dir})")
    names = [info.get(k) for k in ("x", "y", "w")]
    heads = {n: a.get("head_rows") for n, a in (recorded_data or {}).get("arrays", {}).items()
             if a.get("head_rows") is not None}
    differences, notes = compare_identity(recorded_data,
                                          data_identity(data, names, head_rows=heads))
    if differences:
        raise OptionError(f"{data} is not the data the run in {run_dir} was trained on "
                          f"({recorded_data['path']}): {'; '.join(differences)}")
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    info["data"] = str(data)
    learner_changes = {k: v for k, v in changes.items() if k in opts.LEARNER_OPTIONS}
    learner = NaturalGradientLearner.from_state_dict(state, **learner_changes)
    run = {}
    for name, default in run_now.items():  # the run options that apply to the optimizer
        if name in groups[opts.RUN] or not opts.BY_NAME[name].inherit:
            run[name] = default if name not in changes else changes[name]
        else:
            run[name] = recorded.get(name, default)
    fit_options = {**recorded, **learner.effective_options, **run}
    return learner, info, fit_options, found.digest


def _recorded_fit_options(state: dict, model) -> dict:
    """A checkpoint's effective fit options (rebuilt for runs recorded before the table)."""
    info = state.get("run", {})
    if "fit_options" in info:
        return opts.upgrade_recorded(info["fit_options"])
    learner = NaturalGradientLearner.from_state_dict(state)
    data = {"x": info.get("x", "X"), "y": info.get("y", "y"), "w": info.get("w")}
    run = opts.resolve({}, model, names=opts.RUN_OPTIONS,
                       optimizer=learner.effective_options["optimizer"])
    return {**data, **_model_options(model, {}), **learner.effective_options, **run}


def evaluate_run(run_dir, data, *, x: str | None = None, y: str | None = None,
                 w: str | None = None, allow_legacy: bool = False) -> dict:
    """Evaluate the parameters of ``run_dir`` on ``data`` (weighted by ``w``): the Polyak
    average when the run kept one (``average``), else the last iterate. ``x`` and ``y``
    default to ``"X"`` and ``"y"``; on a table, for a run fitted on a table, to the run's
    columns (with their encoding), as ``predict``'s. ``allow_legacy`` lets a legacy
    checkpoint (no run identity) be used.

    On the run's training data (its store and arrays), every chunk the run read is
    compared with its recorded content digest: a change is a DataError naming it.
    """
    state = _load_state(run_dir, allow_legacy=allow_legacy)
    model = model_from_config(state["model"])
    info = state.get("run") or {}
    table = is_table_path(data) and info.get("feature_names")  # fitted on a table too
    # a default x leaves the run's target and weights out, as in the fit
    exclude = (info.get("y"), info.get("w")) if table and x is None else ()
    x = ((info.get("x") if table else None) or "X") if x is None else x
    y = ((info.get("y") if table else None) or "y") if y is None else y
    l2 = (state.get("fit_options") or {}).get("l2", 0.0)
    digests = ChunkDigests.from_dict(state.get("digests")) \
        if _is_training_data(state.get("run", {}), data, x, y if model.requires_targets
                             else None, w) else None
    return evaluate(model, reported_theta(state), data, x=x, y=y, w=w,
                    penalty=L2Penalty.for_model(model, l2) if l2 else None, digests=digests,
                    feature_names=(state.get("run") or {}).get("feature_names"),
                    exclude=exclude)


def _is_training_data(info: dict, data, x, y, w) -> bool:
    """Whether ``data`` with arrays ``x``, ``y``, ``w`` is what the run in ``info`` (its
    ``run.json`` record) was trained on: the same store and the same arrays (``w`` may be
    left out).
    """
    recorded = (info.get("data_identity") or {}).get("path")
    if recorded is None or not isinstance(data, str | os.PathLike):
        return False
    return (str(Path(data).resolve()) == recorded and x == info.get("x")
            and (y is None or y == info.get("y")) and (w is None or w == info.get("w")))


def run_params(run_dir, *, allow_legacy: bool = False) -> dict:
    """The learned parameters of ``run_dir`` as named, JSON-ready values (the Polyak
    average when the run kept one), with ``classes`` (the category of each class) for a
    softmax fitted on a categorical target. ``allow_legacy`` lets a legacy checkpoint (no
    run identity) be used.
    """
    state = _load_state(run_dir, allow_legacy=allow_legacy)
    out = model_from_config(state["model"]).params_to_dict(reported_theta(state))
    names = (state.get("run") or {}).get("class_names")
    if names is not None:  # the categories of a categorical target, in class order
        out["classes"] = list(names)
    return out


def reported_theta(state: dict) -> np.ndarray:
    """The parameters a run reports: ``theta_sum / weight`` for a run with
    ``average=True`` (once it has taken a step), else the fitted ``theta`` (the point
    measured last while a Fisher-scoring step from it awaits its check; the best point of
    an L-BFGS round a stop cut short).
    """
    average = (state.get("fit_options") or {}).get("average")
    if average is None:  # checkpoints from before the options table
        average = (state.get("options") or {}).get("average", False)
    avg = state.get("average") or {}
    if average and float(avg.get("weight") or 0.0) > 0:
        return np.asarray(avg["theta_sum"], dtype=np.float64) / float(avg["weight"])
    refine = state.get("refine") or {}
    if refine.get("direction") is not None and refine.get("theta") is not None:
        return np.asarray(refine["theta"], dtype=np.float64)  # never an unmeasured step
    stopped = state.get("stopped_round") or {}
    if stopped.get("theta") is not None:  # an L-BFGS round cut by a stop: its best point
        return np.asarray(stopped["theta"], dtype=np.float64)
    return np.asarray(state["theta"], dtype=np.float64)


def _load_state(run_dir, *, allow_legacy: bool = False) -> dict:
    """The state of :func:`_load_checkpoint`."""
    return _load_checkpoint(run_dir, allow_legacy=allow_legacy).state


def _load_checkpoint(run_dir, *, allow_legacy: bool = False,
                     set_damaged_aside: bool = False) -> Checkpoint:
    """The newest good checkpoint of ``run_dir``, bound to the run.

    An older one is used when the newer are missing, damaged or not regular files, with
    one warning naming it and why. Refused (:class:`CheckpointError`): a checkpoint of
    another run (its run id is not the one ``run.json`` records) and, unless
    ``allow_legacy``, one that records no run identity (written by an earlier
    natgrad_stream).
    """
    run_dir = Path(run_dir)
    if not checkpoint_files(run_dir):
        raise RunDirectoryError(f"{run_dir} holds no checkpoint ({CHECKPOINT}); "
                                "is it the output directory of 'natgrad-stream fit'?")
    expected = _recorded_run_id(run_dir)

    def bound_to_the_run(found: Checkpoint) -> None:
        got = (found.state.get("run") or {}).get(RUN_ID)
        if got is None and not allow_legacy:
            raise LegacyCheckpointError(
                f"checkpoint {found.path} records no run identity (written by an earlier "
                f"natgrad_stream, or not by 'fit'); to use it anyway pass {ALLOW_LEGACY_FLAG} "
                "(Python: allow_legacy=True)")
        if got is not None and expected is not None and got != expected:
            raise CheckpointError(
                f"checkpoint {found.path} belongs to another run (run id {got}; "
                f"{run_dir / RUN_JSON} records {expected}): it was copied or moved here; "
                "put this run's checkpoint back, or remove it")

    return read_latest_checkpoint(run_dir / CHECKPOINT, set_damaged_aside=set_damaged_aside,
                                  allow_legacy=allow_legacy, check=bound_to_the_run)


def new_run_id() -> str:
    """A new run's identity: 128 random bits, in hexadecimal."""
    return secrets.token_hex(16)


def _read_run_json(run_dir: Path, *, warn: bool = True) -> dict | None:
    """``run.json`` of ``run_dir`` (None when there is none); None, with one warning
    (``warn``), when it cannot be read (a special file is not opened).
    """
    path = run_dir / RUN_JSON
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, what="run record") as fh:
            record = json.loads(fh.read().decode("utf-8"))
    except (CheckpointError, OSError, ValueError) as exc:
        if warn:
            warnings.warn(f"cannot read {path} ({exc}): the run's identity is not "
                          "checked against it", RuntimeWarning, stacklevel=3)
        return None
    return record if isinstance(record, dict) else None


def _recorded_run_id(run_dir: Path, *, warn: bool = True) -> str | None:
    """The run id ``run.json`` records (None: no record, or one from before run ids)."""
    value = (_read_run_json(run_dir, warn=warn) or {}).get(RUN_ID)
    return value if isinstance(value, str) else None


def _record_identity(run_dir: Path, info: dict, learner, resume: bool) -> None:
    """Write the run's identity to ``run.json`` before its first checkpoint: a new run's
    record (its summary null until it ends), or a resumed run's record given the identity
    it lacked (a run continued from a legacy checkpoint).
    """
    record = _read_run_json(run_dir, warn=False) if resume else None
    if record is not None:
        if record.get(RUN_ID) == info[RUN_ID]:
            return
        record = {**record, RUN_ID: info[RUN_ID]}
    else:
        record = {**info, "model": learner.model.config(), "options": learner.options(),
                  "summary": None}
    _write_json_atomic(run_dir / RUN_JSON, record)
