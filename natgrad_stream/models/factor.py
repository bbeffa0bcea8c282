"""A base for models whose batch statistics come from per-row terms.

A :class:`FactorModel` subclass writes one method, :meth:`FactorModel.row_terms`, that
returns for a batch the per-row losses, loss gradients and *metric factors* (vectors whose
outer products sum to the metric, see :mod:`natgrad_stream.models._factor_kernels`) or a
data-independent closed-form metric. Summing with weights, every metric structure (full,
diagonal, block) and the Monte Carlo, empirical and loss-gradient metrics then come for
free; the model's own Numba kernels compute the per-row terms.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from natgrad_stream.models._factor_kernels import accumulate_factors, new_factor_scratch
from natgrad_stream.models.base import Model, Workspace, as_float64_vector, restrict_to_structure

_EMPTY = np.empty(0)


@dataclass
class RowTerms:
    """Per-row terms of a batch of ``n`` rows for a model with ``P`` parameters.

    Attributes
    ----------
    loss : ndarray, shape (n,), float64
        Per-row loss ``l(x_i; θ)`` (e.g. ``−log q``).
    grad : ndarray, shape (n, P), float64
        Per-row ``∂l_i/∂θ``.
    factors : ndarray, shape (n, K, P), float64, or None
        Metric factors: row ``i`` contributes ``Σ_k u_ik u_ikᵀ`` to the metric sum.
    constant_metric : ndarray, shape (P, P), float64, or None
        A metric that does not depend on the rows (a closed form in θ alone); the batch
        contributes ``Σ_i w_i · constant_metric``.
    """

    loss: np.ndarray
    grad: np.ndarray
    factors: np.ndarray | None = None
    constant_metric: np.ndarray | None = None


class FactorModel(Model):
    """A :class:`Model` built from :meth:`row_terms`; see the module docstring."""

    @abc.abstractmethod
    def row_terms(self, X, y, theta, *, metric: str | None,
                  rng: np.random.Generator | None = None, mc_samples: int = 1,
                  w: np.ndarray | None = None, parallel: bool | None = None) -> RowTerms:
        """Per-row loss, gradient and the factors of ``metric`` (None: no metric).

        ``w`` (n,) are the batch's sample weights (None: unit weights), for factors that
        depend on batch statistics (e.g. a centred metric); ``parallel`` picks the serial or
        parallel kernel (None: by batch size).

        Implementations handle their own metric kinds (``model``, ``energy``,
        ``gauss-newton``, ``amari``) and may delegate the generic ones to
        :meth:`generic_factors`.
        """

    def generic_factors(self, X, y, theta, grad, metric, rng, mc_samples):
        """Factors of the kinds every model has: ``empirical``/``loss-gradient`` (the
        per-row loss gradients, eq. 31/39) and ``monte-carlo`` (eq. 30/41).
        """
        if metric in ("empirical", "loss-gradient"):
            return grad[:, None, :]
        if metric == "monte-carlo":
            return self.monte_carlo_factors(X, theta, rng, mc_samples)
        raise ValueError(f"model {self.name!r} does not support metric {metric!r}")

    def _scratch(self, structure, n_threads):
        return new_factor_scratch(self.n_params, structure, n_threads)

    def accumulate(self, X, y, w, theta, *, metric, structure, ws: Workspace, parallel=None,
                   rng=None, mc_samples=1):
        self.check_request(metric, structure, ws)
        X = self.check_X(X)
        n = X.shape[0]
        if self.requires_targets:
            y = self.check_y(y, n)
        wv = _EMPTY if w is None else as_float64_vector(w, "w", n)
        theta = as_float64_vector(theta, "theta", self.n_params)
        terms = self.row_terms(X, y, theta, metric=metric, rng=rng, mc_samples=mc_samples,
                               w=wv if wv.size else None, parallel=self.use_parallel(n, parallel))
        if wv.size:
            loss_sum, wsum = float(wv @ terms.loss), float(wv.sum())
            ws.grad[:] = wv @ terms.grad
        else:
            loss_sum, wsum = float(terms.loss.sum()), float(n)
            ws.grad[:] = terms.grad.sum(axis=0)
        ws.fisher[...] = 0.0
        if metric is None:
            return loss_sum, wsum
        if terms.factors is not None:
            accumulate_factors(terms.factors, wv, structure, self.param_bounds(), ws.fisher,
                               ws.scratch, self.use_parallel(n, parallel))
        elif terms.constant_metric is not None:
            ws.fisher[...] = wsum * restrict_to_structure(terms.constant_metric, structure,
                                                          self.param_bounds())
        else:
            raise ValueError(f"model {self.name!r} gave no terms for metric {metric!r}")
        return loss_sum, wsum

    def check_y(self, y, n: int) -> np.ndarray:
        """Validate targets for a batch of ``n`` rows (default: a float64 vector)."""
        if y is None:
            raise ValueError(f"model {self.name!r} needs targets y")
        return as_float64_vector(y, "y", n)

    def scores(self, X, y, theta):
        """``∂ log q/∂θ = −∂l/∂θ`` per row, shape (n, P) (the loss is −log q)."""
        X = self.check_X(X)
        if self.requires_targets:
            y = self.check_y(y, X.shape[0])
        theta = as_float64_vector(theta, "theta", self.n_params)
        return -self.row_terms(X, y, theta, metric=None).grad

    def model_fisher(self, X, theta, w=None):
        """Closed-form model Fisher averaged over the rows of ``X`` (needs ``model``)."""
        X = self.check_X(X)
        y = None
        if self.requires_targets:  # the model Fisher does not read y; any valid target
            y = self.sample_targets(X, theta, np.random.default_rng(0), 1)[0]
        return self.batch_metric(X, y, theta, w, metric="model")

    def metric_matvec(self, X, y, w, theta, U, *, metric):
        rng = np.random.default_rng(0) if metric == "monte-carlo" else None
        return self.batch_metric(X, y, theta, w, metric=metric, rng=rng) @ U
