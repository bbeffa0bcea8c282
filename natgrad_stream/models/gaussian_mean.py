"""The paper's linear-Gaussian example (section 1.1): ``x ~ N(A θ, I)``.

With the default ``A = [[3, 1/3], [1/3, 0]]`` the model is the badly parameterized
two-dimensional Gaussian of the paper, whose Fisher information is
``AᵀA = [[9 + 1/9, 1], [1, 1/9]]`` everywhere.
"""

from __future__ import annotations

import math

import numpy as np

from natgrad_stream._constants import PAPER_MIXING as _PAPER_MIXING
from natgrad_stream.models import _gaussian_kernels as K
from natgrad_stream.models._gram_kernels import BLOCK_ROWS
from natgrad_stream.models.base import (
    Model,
    Workspace,
    as_float64_vector,
    restrict_to_structure,
)

#: The mixing matrix of the paper's equation (1): mean = (3θ₁ + θ₂/3, θ₁/3).
PAPER_MIXING = np.array(_PAPER_MIXING)
_EMPTY = np.empty(0)


class GaussianMean(Model):
    """Mean of a unit-covariance Gaussian parameterized through a mixing matrix.

    Parameters
    ----------
    n_features : int
        Data dimension ``d``.
    mixing : array_like, shape (d, k), optional
        ``A``; defaults to the paper's matrix, which requires ``d == 2``.

    Notes
    -----
    Loss per sample: ``½‖x − Aθ‖² + (d/2) log 2π`` (the negative log-likelihood).
    Model Fisher: ``AᵀA``, independent of θ and of the data.
    """

    name = "gaussian-mean"
    requires_targets = False
    scoring_converges = True  # the metric is the Hessian (a constant): one Newton step
    metrics = ("model", "empirical", "loss-gradient")
    exact_metrics = ("model",)

    def __init__(self, n_features: int, *, mixing=None):
        super().__init__(n_features)
        if mixing is None:
            if self.n_features != 2:
                raise ValueError(
                    "gaussian-mean: the paper's default mixing matrix is 2×2 but the data have "
                    f"{self.n_features} features; pass a mixing matrix A of shape "
                    f"({self.n_features}, k)"
                )
            mixing = PAPER_MIXING
        A = np.array(mixing, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != self.n_features:
            raise ValueError(f"mixing must have shape ({self.n_features}, k), got {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError("mixing matrix has non-finite entries")
        self.mixing = np.ascontiguousarray(A)
        self.fisher_closed_form = self.mixing.T @ self.mixing

    @classmethod
    def options_from_data(cls, group, source, options):
        """The mixing matrix: the array named ``options["mixing"]`` (default ``A``)."""
        name = options.get("mixing")
        key = name or "A"
        if group is not None and key in group.array_keys():
            return {"mixing": np.asarray(group[key][...], dtype=np.float64)}
        if name is not None:
            raise ValueError(f"mixing array {name!r} not found in the data")
        return {}

    @property
    def n_params(self) -> int:
        return self.mixing.shape[1]

    def config(self):
        return {**super().config(), "mixing": self.mixing.tolist()}

    def params_to_dict(self, theta):
        return {"theta": np.asarray(theta, dtype=np.float64).tolist()}

    def mean(self, theta) -> np.ndarray:
        """Model mean ``Aθ``, shape (d,)."""
        return self.mixing @ as_float64_vector(theta, "theta", self.n_params)

    def _scratch(self, structure, n_threads):
        d = self.n_features
        return {"ST": np.zeros((d, BLOCK_ROWS)), "rsum": np.zeros(d), "rr": np.zeros((d, d))}

    def accumulate(self, X, y, w, theta, *, metric, structure, ws: Workspace, parallel=None,
                   rng=None, mc_samples=1):
        X = self.check_X(X)
        w = _EMPTY if w is None else as_float64_vector(w, "w", X.shape[0])
        sc = ws.scratch
        sc["rsum"][:] = 0.0
        sc["rr"][:] = 0.0
        empirical = metric in ("empirical", "loss-gradient")
        half_sq, wsum = K.residual_accumulate(X, w, self.mean(theta), empirical,
                                              sc["rsum"], sc["rr"], sc["ST"])
        A = self.mixing
        ws.grad[:] = -(A.T @ sc["rsum"])
        if metric is None:
            ws.fisher[...] = 0.0
        else:
            G = A.T @ sc["rr"] @ A if empirical else wsum * self.fisher_closed_form
            ws.fisher[...] = restrict_to_structure(G, structure, self.param_bounds())
        return half_sq + 0.5 * self.n_features * math.log(2 * math.pi) * wsum, wsum

    def scores(self, X, y, theta):
        X = self.check_X(X)
        out = np.empty((X.shape[0], self.n_params))
        K.residual_scores(X, self.mean(theta), self.mixing, out)
        return out

    def model_fisher(self, X, theta, w=None):
        return self.fisher_closed_form.copy()

    def evaluation_sums(self, X, y, theta):
        ws = self.new_workspace("diagonal", n_threads=1)
        nll, n = self.accumulate(X, None, None, theta, metric=None, structure="diagonal", ws=ws)
        return {"n": n, "nll": nll}

    def evaluation_metrics(self, sums):
        return {"n": int(sums["n"]), "nll": sums["nll"] / sums["n"]}
