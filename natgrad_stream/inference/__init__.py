"""Statistical inference at a fitted θ: standard errors, tests, intervals, likelihood.

:func:`summary` streams the data once, out of core, through the model's fused kernels
(:mod:`~natgrad_stream.inference.sums`), and turns the sums into statsmodels' numbers
(:mod:`~natgrad_stream.inference.statistics`; text table:
:mod:`~natgrad_stream.inference.report`).

Examples
--------
>>> import numpy as np
>>> from natgrad_stream.learner import NaturalGradientLearner
>>> from natgrad_stream.models import make_model
>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((500, 2))
>>> y = (rng.random(500) < 1 / (1 + np.exp(-X @ [1.0, -0.5]))).astype(float)
>>> learner = NaturalGradientLearner(make_model("logistic", 2)).fit((X, y))
>>> s = learner.summary((X, y))
>>> s.names, s.bse.shape
(['x0', 'x1', 'intercept'], (3,))
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import EVAL_BATCH_ROWS
from natgrad_stream.data import as_source
from natgrad_stream.data.tables import check_feature_names
from natgrad_stream.errors import DataError
from natgrad_stream.inference.statistics import (
    INFERENCE_MODELS,
    Summary,
    check_inference_model,
    coefficient_names,
    summarize,
)
from natgrad_stream.inference.sums import InferenceSums, dask_sums, stream_sums

__all__ = ["INFERENCE_MODELS", "InferenceSums", "Summary", "coefficient_names", "summarize",
           "summary"]


def summary(model, theta, data, *, x: str = "X", y: str | None = "y", w: str | None = None,
            alpha: float = 0.05, cov: str = "model", l2: float = 0.0,
            converged: bool | None = None, feature_names=None, class_names=None,
            batch_size: int = EVAL_BATCH_ROWS, digests=None, progress=None,
            client=None) -> Summary:
    """The inference :class:`Summary` of ``model`` at ``theta`` over every row of ``data``.

    Parameters
    ----------
    model : Model
        One of :data:`INFERENCE_MODELS` (others: ``ValueError``).
    theta : ndarray, shape (P,)
        The fitted parameters (the optimum of ``data`` for the tests to mean anything:
        ``Summary.decrement`` says how far it is).
    data : path, zarr.Group, (X, y[, w]) arrays (dense or SciPy sparse), Source
        Read once, in chunk order, as ``evaluate`` reads it.
    x, y, w : str
        Array names in a Zarr group; ``w`` (frequency weights) as in the fit.
    alpha : float
        Intervals at level 1 − alpha.
    cov : {"model", "robust"}
        Covariance of the main columns; the robust (HC0) ones are always computed.
    l2 : float
        The fit's L2 penalty λ (sandwich covariance of the penalized estimator).
    converged : bool, optional
        Whether the fit converged (recorded in the summary).
    feature_names, class_names : sequence of str, optional
        Names of the coefficients (default a table's columns, else ``x0 …``;
        ``intercept``; softmax classes ``0 … K−1``). A table whose columns are not
        ``feature_names`` (names or order) is a DataError.
    digests : ChunkDigests, optional
        A run's content digests when ``data`` is its training data.
    client : distributed.Client, optional
        Compute the pass on this Dask cluster: ``data`` is then a Zarr store's path or
        URL, which every worker opens (blocks of chunks, sums merged in a fixed tree).

    Returns
    -------
    Summary
    """
    check_inference_model(model)
    names = coefficient_names(model, feature_names=feature_names, class_names=class_names)
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (model.n_params,):
        raise ValueError(f"theta must have shape ({model.n_params},), got {theta.shape}")
    if client is not None:
        sums = dask_sums(client, model, theta, data, x=x, y=y, w=w)
        return summarize(model, theta, sums, alpha=alpha, cov=cov, l2=l2,
                         converged=converged, names=names)
    source = as_source(data, x=x, y=y, w=w)
    columns = getattr(source, "feature_names", None)
    check_feature_names(columns, feature_names, array=x)
    if source.n_features != model.n_features:
        raise DataError(f"has {source.n_features} features but the model was fitted on "
                        f"{model.n_features}", array=x)
    if feature_names is None and columns is not None:
        names = coefficient_names(model, feature_names=columns, class_names=class_names)
    if not source.has_targets:
        raise DataError(f"model {model.name!r} needs targets for its likelihood", array=y)
    sums = stream_sums(model, theta, source, batch_size=batch_size, digests=digests,
                       progress=progress)
    return summarize(model, theta, sums, alpha=alpha, cov=cov, l2=l2, converged=converged,
                     names=names)
