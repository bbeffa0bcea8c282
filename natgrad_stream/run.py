"""Run directories: what ``natgrad-stream fit`` writes and ``evaluate``/``params`` read.

Layout of ``RUN/``:

``checkpoint.npz``
    The learner's full state (:mod:`natgrad_stream.checkpoint`), written atomically at the
    end of ``fit``, every ``checkpoint_every`` samples, and on a graceful stop.
``metrics.jsonl``
    Append-only training log (:class:`~natgrad_stream.callbacks.MetricsLogger`).
``run.json``
    Human-readable record: data, array names, model, options and the last summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from natgrad_stream.callbacks import CheckpointEvery, MetricsLogger, ProgressBar
from natgrad_stream.checkpoint import load_checkpoint
from natgrad_stream.data import as_source
from natgrad_stream.errors import RunDirectoryError
from natgrad_stream.evaluate import evaluate
from natgrad_stream.lbfgs import (
    NaturalLBFGS,
    RoundCheckpoint,
    RoundLogger,
    RoundProgress,
    is_lbfgs_state,
)
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import MODELS, make_model, model_from_config

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
RUN_JSON = "run.json"


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json.tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=lambda v: v.tolist())
        fh.write("\n")
    os.replace(tmp, path)


def load_learner(run_dir) -> tuple[NaturalGradientLearner | NaturalLBFGS, dict]:
    """Rebuild the learner saved in ``run_dir``; returns ``(learner, run_info)``.

    The learner is a :class:`NaturalLBFGS` when the run used ``optimizer="lbfgs"``.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} holds no checkpoint ({CHECKPOINT}); "
                                "is it the output directory of 'natgrad-stream fit'?")
    state = load_checkpoint(path)
    if is_lbfgs_state(state):
        return NaturalLBFGS.from_state_dict(state), state.get("run", {})
    return NaturalGradientLearner.from_state_dict(state), state.get("run", {})


def _open_group(data):
    """The Zarr group behind ``data`` when it is a path to one, else None."""
    if not isinstance(data, str | os.PathLike):
        return data if hasattr(data, "array_keys") else None
    import zarr

    try:
        return zarr.open_group(str(data), mode="r")
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError):
        return None


def fit_run(data, run_dir, *, model: str | None = None, x: str = "X", y: str = "y",
            w: str | None = None, epochs: int | None = None, resume: bool = False,
            overwrite: bool = False, progress: bool = False, checkpoint_every: int | None = None,
            max_samples: int | None = None, log_every: int = 65536, mixing: str | None = None,
            learner_options: dict | None = None, model_options: dict | None = None,
            stop_handler=None, rounds: int | None = None) -> dict:
    """Fit (or resume) a run in ``run_dir``; returns the summary dict.

    The data are opened and validated before anything is written. A new run refuses a
    directory that already holds one unless ``overwrite``; ``resume`` continues from the
    checkpoint (model and options come from it). On an error the checkpoint is left as it
    was and the log records the error. An overwriting run writes its log to
    ``metrics.jsonl.partial`` and its checkpoint only at the end, replacing the old run's
    files only once it has finished.

    ``learner_options={"optimizer": "lbfgs", ...}`` makes a batch L-BFGS run in the natural
    space (:class:`~natgrad_stream.lbfgs.NaturalLBFGS`; the other keys are its options).
    Such a run takes ``rounds`` (total rounds; a resumed run continues up to it) instead
    of ``epochs`` (default 1 for the SGD learner), logs a ``round`` record per round and
    checkpoints after every round (``checkpoint_every`` does not apply).
    """
    run_dir = Path(run_dir)
    ckpt, log_path = run_dir / CHECKPOINT, run_dir / METRICS
    if resume:
        learner, info = load_learner(run_dir)
        x, y = info.get("x", x), info.get("y", y)
        w = info.get("w", w)
    else:
        if model is None:
            raise ValueError("a new run needs a model name")
        existing = [p.name for p in (ckpt, log_path) if p.exists()]
        if existing and not overwrite:
            raise RunDirectoryError(
                f"{run_dir} already holds a run ({', '.join(existing)}); pass --resume to "
                "continue it or --overwrite to replace it")
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
        requires_y = MODELS[model].requires_targets
        source = as_source(data, x=x, y=y if requires_y else None, w=w)
        given = {"mixing": mixing, **(model_options or {})}
        options = MODELS[model].options_from_data(_open_group(data), source, given)
        mdl = make_model(model, source.n_features, **options)
        opts = dict(learner_options or {})
        if opts.get("optimizer") == "lbfgs":
            opts.pop("optimizer")
            learner = NaturalLBFGS(mdl, **opts)
        else:
            learner = NaturalGradientLearner(mdl, **opts)
        info = {"data": str(data), "x": x, "y": y if requires_y else None, "w": w}
    lbfgs = isinstance(learner, NaturalLBFGS)
    if resume and not lbfgs and (learner_options or {}).get("optimizer") == "lbfgs":
        raise ValueError(f"{run_dir} holds a streaming natural-gradient run, not an L-BFGS "
                         "run (optimizer lbfgs); resume it without --optimizer lbfgs")
    if lbfgs:
        for name, value, why in (("epochs", epochs, "pass rounds (--lbfgs-rounds)"),
                                 ("checkpoint_every", checkpoint_every,
                                  "it checkpoints after every round")):
            if value is not None:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) does not apply to an "
                                 f"L-BFGS run (optimizer lbfgs): {why}")
    elif rounds is not None:
        raise ValueError("rounds (--lbfgs-rounds) applies only to L-BFGS runs (optimizer "
                         f"lbfgs); {'the run in ' + str(run_dir) if resume else 'this run'} "
                         "uses the streaming natural-gradient learner")
    source = as_source(data, x=x, y=y if learner.model.requires_targets else None, w=w)
    if source.n_features != learner.model.n_features:
        raise RunDirectoryError(f"data have {source.n_features} features; the run was fitted "
                                f"on {learner.model.n_features}")
    run_dir.mkdir(parents=True, exist_ok=True)
    # An overwriting run logs beside the old run and replaces it only once it has finished,
    # so a failed attempt loses nothing that was there.
    replacing = not resume and overwrite and (ckpt.exists() or log_path.exists())
    new_log = run_dir / (METRICS + ".partial") if replacing else log_path
    if replacing:
        new_log.unlink(missing_ok=True)
    if lbfgs:
        callbacks = [RoundLogger(new_log, every=log_every),
                     RoundCheckpoint(ckpt, per_round=not replacing, extra=info)]
    else:
        callbacks = [MetricsLogger(new_log, every=log_every),
                     CheckpointEvery(ckpt, every=None if replacing else checkpoint_every,
                                     extra=info)]
    if progress:
        callbacks.append(RoundProgress() if lbfgs else ProgressBar())
    if stop_handler is not None:
        stop_handler(learner)
    if lbfgs:
        learner.fit(source, rounds=rounds, callbacks=callbacks, max_samples=max_samples)
    else:
        learner.fit(source, epochs=1 if epochs is None else epochs, callbacks=callbacks,
                    max_samples=max_samples)
    if replacing:
        os.replace(new_log, log_path)
    summary = learner.result.to_dict()
    _write_json_atomic(run_dir / RUN_JSON, {**info, "model": learner.model.config(),
                                            "options": learner.options(), "summary": summary})
    return summary


def evaluate_run(run_dir, data, *, x: str = "X", y: str = "y", w: str | None = None) -> dict:
    """Evaluate the parameters saved in ``run_dir`` on ``data`` (weighted by ``w``)."""
    state = _load_state(run_dir)
    model = model_from_config(state["model"])
    return evaluate(model, np.asarray(state["theta"]), data, x=x, y=y, w=w)


def run_params(run_dir) -> dict:
    """The learned parameters of ``run_dir`` as named, JSON-ready values."""
    state = _load_state(run_dir)
    return model_from_config(state["model"]).params_to_dict(np.asarray(state["theta"]))


def _load_state(run_dir) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir} holds no checkpoint ({CHECKPOINT})")
    return load_checkpoint(path)
