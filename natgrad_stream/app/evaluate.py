"""Streaming evaluation: mergeable sums over a source, one pass, no shuffle."""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import EVAL_BATCH_ROWS
from natgrad_stream.data import as_source
from natgrad_stream.data.tables import check_feature_names
from natgrad_stream.errors import DataError
from natgrad_stream.models import Model

#: Rows per evaluation batch (evaluation has no step, so large batches are cheaper).


def evaluate(model: Model, theta: np.ndarray, data, *, x: str = "X", y: str | None = "y",
             w: str | None = None, batch_size: int = EVAL_BATCH_ROWS, penalty=None,
             digests=None, feature_names=None, exclude=()) -> dict:
    """Evaluate ``model`` at ``theta`` over all rows of ``data``.

    Parameters
    ----------
    model : Model
    theta : ndarray, shape (P,)
    data : path, zarr.Group, arrays, Source or iterable
    x, y : str
        Array names in a Zarr group (``y`` is ignored for unsupervised models).
    w : str, optional
        Sample-weight array: the measures become weighted means, as in training (e.g. the
        exposure of a Poisson rate model). Models with ``supports_weighted_evaluation``.
    batch_size : int
    penalty : L2Penalty, optional
        The fit's L2 penalty: when active, the result adds ``objective``, the mean training
        loss (weighted by ``w``) plus ``λ/2·‖θ_S‖²``, what the fit minimized.
    digests : ChunkDigests, optional
        The fitted run's content digests, when ``data`` is its training data: a chunk
        that changed since the run read it is a DataError naming it.
    feature_names : sequence of str, optional
        The table columns the model was fitted on: a table whose columns differ (names
        or order) is a DataError.
    exclude : sequence of str
        Columns a table's default ``x`` (every column but ``y`` and ``w``) leaves out
        too: a fitted run's weights, evaluated without them.

    Returns
    -------
    dict
        ``n`` plus the model's measures, e.g. ``log_loss`` and ``accuracy`` (logistic).
    """
    if w is not None and not model.supports_weighted_evaluation:
        raise ValueError(f"model {model.name!r} does not evaluate with sample weights "
                         f"(--w {w}); evaluate without them")
    source = as_source(data, x=x, y=y if model.requires_targets else None, w=w,
                       exclude=exclude)
    check_feature_names(getattr(source, "feature_names", None), feature_names, array=x)
    if source.n_features != model.n_features:
        raise DataError(f"has {source.n_features} features but the model was fitted on "
                        f"{model.n_features}", array=x)
    if model.requires_targets and not source.has_targets:
        raise DataError(f"model {model.name!r} needs targets to evaluate", array=y)
    checks = model.data_checks()
    totals: dict[str, float] = {}
    penalized = penalty is not None and penalty.active
    ws = model.new_workspace("diagonal") if penalized else None
    loss = weight = 0.0
    with source.batches(batch_size=batch_size, epochs=1, shuffle=False, digests=digests,
                        **checks) as stream:
        for batch in stream:
            sums = model.evaluation_sums(batch.X, batch.y, theta) if w is None else \
                model.evaluation_sums(batch.X, batch.y, theta, w=batch.w)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
            if penalized:  # the training loss, as the fit's passes sum it
                ls, wt = model.accumulate(batch.X, batch.y, batch.w, theta, metric=None,
                                          structure="diagonal", ws=ws)
                loss, weight = loss + ls, weight + wt
    if not totals:
        raise DataError("no rows to evaluate", array=x)
    if w is not None and not totals.get("weight", 1.0) > 0:
        raise DataError("every sample weight is zero: no weighted mean to evaluate (evaluate "
                        "without --w, or with other weights)", array=w)
    out = model.evaluation_metrics(totals)
    if penalized:
        out["objective"] = loss / weight + penalty.value(theta)
    return out


def binary_auc(model: Model, theta: np.ndarray, data, *, x: str = "X", y: str = "y",
               batch_size: int = EVAL_BATCH_ROWS) -> float | None:
    """The area under the ROC curve of a binary classifier's probabilities over all rows of
    ``data`` (labels 0/1), or None when one class is absent.

    Exact, as scikit-learn's ``roc_auc_score``: the Mann–Whitney statistic of the
    probabilities' ranks, ties counted half. The probabilities are kept to rank them: 8
    bytes per row (the held-out sets of ``--val``).
    """
    from scipy.stats import rankdata

    source = as_source(data, x=x, y=y)
    probs, labels = [], []
    with source.batches(batch_size=batch_size, epochs=1, shuffle=False,
                        **model.data_checks()) as stream:
        for batch in stream:
            probs.append(model.predict_mean(batch.X, theta))
            labels.append(np.asarray(batch.y) > 0.5)
    if not probs:
        raise DataError("no rows to evaluate", array=x)
    positive = np.concatenate(labels)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(np.concatenate(probs))
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
