"""What a fitted model predicts for a batch of rows: probabilities, classes, means, links.

:func:`predict_columns` returns, for a batch ``X`` (dense or CSR rows), the requested
kinds of prediction (:data:`KINDS`) as arrays:

``proba``
    class probabilities ``(n, K)`` (logistic: ``[1 − p, p]``; softmax: ``softmax(z)``);
``class``
    the predicted class code ``(n,)`` int64: logistic ``z > 0``, softmax the first
    most probable class (the rules ``evaluate``'s accuracy counts with);
``mean``
    ``E[y | x]`` ``(n,)``: logistic ``p``, linear ``z``, Poisson ``exp(z)``, mlp the
    network's output;
``link``
    the linear predictor: ``(n,)`` for logistic (log-odds), linear and Poisson (log of the
    mean); softmax ``(n, K)`` logits with the reference class 0 at zero.

Density models (gaussian, gaussian-mean, ising, ica) predict no target: ValueError.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.models import _predict_kernels as K
from natgrad_stream.models.base import as_float64_vector

KINDS = ("proba", "class", "mean", "link")
#: The kinds each model predicts, its default first.
MODEL_KINDS = {"logistic": ("proba", "class", "mean", "link"),
               "softmax": ("proba", "class", "link"),
               "linear": ("mean", "link"), "poisson": ("mean", "link"), "mlp": ("mean",)}
DEFAULT_KINDS = {"logistic": ("proba", "class"), "softmax": ("proba", "class"),
                 "linear": ("mean",), "poisson": ("mean",), "mlp": ("mean",)}


def check_kinds(model, kinds) -> tuple[str, ...]:
    """``kinds`` checked for ``model`` (None: its default); ValueError naming what it
    predicts otherwise.
    """
    allowed = MODEL_KINDS.get(model.name)
    if allowed is None:
        raise ValueError(f"model {model.name!r} predicts no target (it models the density "
                         f"of X); predictions apply to {', '.join(MODEL_KINDS)}")
    if kinds is None:
        return DEFAULT_KINDS[model.name]
    kinds = tuple(dict.fromkeys(kinds))
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise ValueError(f"model {model.name!r} predicts {', '.join(allowed)}; got "
                         f"{', '.join(bad) or 'nothing'}")
    return kinds


def n_columns(model, kind: str) -> int:
    """Columns of ``kind``'s array for ``model`` (1 for a 1-D array)."""
    if kind == "proba" or (kind == "link" and model.name == "softmax"):
        return 2 if model.name == "logistic" else model.n_classes
    return 1


def linear_predictors(model, X, theta) -> np.ndarray:
    """``z`` of a GLM ``(n,)`` or softmax logits ``(n, K)`` (class 0 at zero), float64."""
    X = model.check_X(X)
    theta = as_float64_vector(theta, "theta", model.n_params)
    softmax = model.name == "softmax"
    out = np.empty((X.shape[0], model.n_classes - 1 if softmax else 1))
    if isinstance(X, SparseRows):
        K.sparse_linear_predictors(X.data, X.indices, X.indptr, theta, out)
    else:
        K.dense_linear_predictors(X, theta, out)
    return np.hstack([np.zeros((X.shape[0], 1)), out]) if softmax else out[:, 0]


def predict_columns(model, X, theta, kinds) -> dict[str, np.ndarray]:
    """The predictions ``kinds`` (see the module's docstring) for the rows ``X``."""
    kinds = check_kinds(model, kinds)
    if model.name == "mlp":
        return {"mean": model.predict(X, theta)}
    z = linear_predictors(model, X, theta)
    out = {}
    for kind in kinds:
        if kind == "link":
            out[kind] = z
        elif kind == "class":
            out[kind] = (z > 0).astype(np.int64) if z.ndim == 1 else \
                np.argmax(z, axis=1).astype(np.int64)
        elif kind == "proba" and model.name == "logistic":
            out[kind] = np.empty((z.shape[0], 2))
            K.logistic_probabilities(z, out[kind])
        elif kind == "proba":
            out[kind] = np.empty_like(z)
            K.softmax_probabilities(z, out[kind])
        elif model.name == "logistic":
            out[kind] = expit(z)
        elif model.name == "poisson":
            out[kind] = np.exp(z)
        else:
            out[kind] = z
    return out
