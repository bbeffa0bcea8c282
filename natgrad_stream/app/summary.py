"""``natgrad-stream summary``: statistical inference on a fitted run, in one streamed pass.

The run's parameters (those ``params`` and ``evaluate`` report) and its model, penalty,
array names and class names come from its checkpoint; the data default to the store the
run was trained on, whose chunks are checked against the run's content digests as
``evaluate`` checks them.
"""

from __future__ import annotations

import warnings

from natgrad_stream.app.runs import _is_training_data, _load_state, reported_theta
from natgrad_stream.data.digests import ChunkDigests
from natgrad_stream.errors import OptionError
from natgrad_stream.inference import Summary, summary
from natgrad_stream.inference.statistics import check_inference_model
from natgrad_stream.models import model_from_config


def recorded_data(run_dir, info: dict) -> str:
    """The path (or URL) of the data the run was trained on, from its record."""
    identity = info.get("data_identity") or {}
    given = info.get("data")
    if isinstance(given, str) and "://" in given:
        return given
    if identity.get("path") is None:
        raise OptionError(f"the run in {run_dir} records no data path (it was fitted on "
                          "in-memory data): give DATA")
    return identity["path"]


def summary_run(run_dir, data=None, *, x: str | None = None, y: str | None = None,
                w: str | None = None, alpha: float = 0.05, cov: str = "model",
                allow_legacy: bool = False, progress=None, dask: str | None = None,
                dask_workers: int | None = None) -> Summary:
    """The inference :class:`~natgrad_stream.inference.Summary` of the run in ``run_dir``
    on ``data`` (default: the run's training data).

    ``x``, ``y``, ``w`` default to the arrays the run was fitted on (its weights too). A
    run that did not converge is summarized with one RuntimeWarning (its θ is not the
    optimum the standard errors assume). ``dask`` (a scheduler's address) or
    ``dask_workers`` (a local cluster of that many processes) compute the pass on Dask.
    """
    state = _load_state(run_dir, allow_legacy=allow_legacy)
    model = model_from_config(state["model"])
    check_inference_model(model)
    info = state.get("run") or {}
    x = x if x is not None else info.get("x") or "X"
    y = y if y is not None else info.get("y") or "y"
    if data is None:
        data = recorded_data(run_dir, info)
    if w is None and _is_training_data(info, data, x, y, None):
        w = info.get("w")  # the training data: weighted as the fit was
    l2 = float((state.get("fit_options") or {}).get("l2") or 0.0)
    converged = bool((state.get("counters") or {}).get("converged", False))
    digests = ChunkDigests.from_dict(state.get("digests")) \
        if _is_training_data(info, data, x, y, w) else None
    if not converged:
        warnings.warn(f"the run in {run_dir} did not converge: its θ is not the optimum the "
                      "standard errors and tests assume (resume the fit, or read them as "
                      "approximate)", RuntimeWarning, stacklevel=2)
    args = {"x": x, "y": y, "w": w, "alpha": alpha, "cov": cov, "l2": l2,
            "converged": converged, "class_names": info.get("class_names"),
            "feature_names": info.get("feature_names")}
    if dask is None and dask_workers is None:
        return summary(model, reported_theta(state), data, digests=digests,
                       progress=progress, **args)
    import logging

    from natgrad_stream.distributed import dask_client
    from natgrad_stream.distributed.cluster import require_distributed

    require_distributed()
    for name in list(logging.root.manager.loggerDict):  # one line if the cluster fails
        if name.split(".")[0] in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with dask_client(dask, dask_workers) as client:
        return summary(model, reported_theta(state), data, client=client, **args)
