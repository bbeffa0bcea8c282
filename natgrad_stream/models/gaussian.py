"""The full multivariate Gaussian density ``x ~ N(μ, Σ)`` (unsupervised).

Parameterization
----------------
``θ = [μ (d), vech(Σ) (d(d+1)/2)]``, ``vech`` being the lower triangle of ``Σ`` row by
row, ``(0,0), (1,0), (1,1), (2,0), …``. We keep the covariance itself rather than the
precision ``Λ = Σ⁻¹``: in ``(μ, Σ)`` the natural-gradient step with the model Fisher is

``μ ← μ + η (x̄ − μ)``,  ``Σ ← Σ + η (S − Σ)``,  ``S = ⟨(x − μ)(x − μ)ᵀ⟩_batch``,

a convex combination of positive semi-definite matrices for ``0 < η <= 1``, so the exact
step can never leave the cone of covariance matrices (the same step in ``Λ`` is
``Λ ← Λ + η (Λ − Λ S Λ)``, which can, e.g. at ``η = 1``). With the learner's harmonic
step ``η = b/t`` it is the running sample mean and a running average of scatter matrices.

Metrics
-------
``model`` (default)
    The closed-form Fisher (eq. 30), block-diagonal over the groups ``mean`` and ``cov``:
    ``Σ⁻¹`` and ``½ Dᵀ(Σ⁻¹ ⊗ Σ⁻¹)D`` (``D`` the duplication matrix). It depends on θ
    only, so it is a :attr:`RowTerms.constant_metric`.
``empirical`` / ``loss-gradient``
    ``⟨∇l ∇lᵀ⟩`` over the data (eq. 31/39; the loss is ``−log q``, so they coincide).
``energy``
    ``⟨∂E ∂Eᵀ⟩`` over the data (eq. 33) with ``E = ½ (x − μ)ᵀΣ⁻¹(x − μ)``, ignoring
    ``log Z = ½ log det(2πΣ)``.

Loss per row: ``½ (x − μ)ᵀΣ⁻¹(x − μ) + ½ log det(2πΣ)`` (the negative log-likelihood).

Initial value
-------------
``μ = 0``, ``Σ = I`` unless ``init_mean``/``init_cov`` are given. Start near the data when
you can: the learner's first harmonic step has ``η = 1`` and sets ``Σ`` to the scatter of
the first batch about the *initial* mean, ``C + (x̄ − μ₀)(x̄ − μ₀)ᵀ``. That bias is averaged
away only as ``1/t``, and while ``Σ`` shrinks back the whitener (refreshed at geometrically
spaced times) lags behind the metric and can step out of the positive definite cone when
``μ₀`` is many standard deviations from the data. :meth:`Gaussian.init_from_sample` gives
the options for a start at the mean and covariance of a few rows, which the command line
uses (:meth:`Gaussian.options_from_data`); from there one pass of the default learner
lands within ~1e-3 of the maximum-likelihood estimate (see the tests).

A θ whose ``Σ`` is not positive definite raises :class:`NotPositiveDefiniteError` (a
``ValueError``) from every method that evaluates the model, rather than returning
meaningless numbers.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from natgrad_stream._jit import num_threads
from natgrad_stream.models import _gaussian_density_kernels as K
from natgrad_stream.models.base import as_float64_vector
from natgrad_stream.models.factor import FactorModel, RowTerms

_DUMMY_ENERGY = np.zeros((1, 1, 1))
#: Rows of the training data whose mean and covariance start a command-line fit.
INIT_ROWS = 1024
#: Relative ridge added to a singular sample covariance in :meth:`Gaussian.init_from_sample`.
INIT_RIDGE = 1e-6


class NotPositiveDefiniteError(ValueError):
    """θ holds a covariance matrix that is not (numerically) positive definite."""


def n_vech(d: int) -> int:
    """Length ``d(d+1)/2`` of ``vech`` of a ``d × d`` symmetric matrix."""
    return d * (d + 1) // 2


def vech(S) -> np.ndarray:
    """The lower triangle of a symmetric matrix, row by row, shape (d(d+1)/2,)."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {S.shape}")
    return S[np.tril_indices(S.shape[0])].copy()


def unvech(v, d: int) -> np.ndarray:
    """The symmetric ``d × d`` matrix whose :func:`vech` is ``v``."""
    v = as_float64_vector(v, "vech", n_vech(d))
    S = np.zeros((d, d))
    S[np.tril_indices(d)] = v
    return S + np.tril(S, -1).T


class Gaussian(FactorModel):
    """Full-covariance Gaussian density ``N(μ, Σ)`` fitted by maximum likelihood.

    Parameters
    ----------
    n_features : int
        Dimension ``d``; ``P = d + d(d+1)/2`` parameters.
    init_mean : array_like, shape (d,), optional
        Initial mean (default 0).
    init_cov : array_like, shape (d, d), optional
        Initial covariance, symmetric positive definite (default ``I``).

    Notes
    -----
    The maximum-likelihood estimate on a data set is the sample mean and the *biased*
    sample covariance ``(1/n) Σ (x − x̄)(x − x̄)ᵀ``. See the module docstring for the
    layout, the metrics and why ``Σ`` (not ``Σ⁻¹``) is the parameter.

    Examples
    --------
    >>> model = Gaussian(2)
    >>> theta = model.pack([1.0, -1.0], [[2.0, 0.5], [0.5, 1.0]])
    >>> theta
    array([ 1. , -1. ,  2. ,  0.5,  1. ])
    >>> model.params_to_dict(theta)["cov"]
    [[2.0, 0.5], [0.5, 1.0]]

    Start a fit at the mean and covariance of the first rows:

    >>> from natgrad_stream.learner import NaturalGradientLearner
    >>> X = np.random.default_rng(0).normal([100.0, -5.0], [1.0, 0.01], size=(4000, 2))
    >>> model = Gaussian(2, **Gaussian.init_from_sample(X[:1024]))
    >>> mean = NaturalGradientLearner(model).fit((X,)).theta[:2]
    >>> bool(np.allclose(mean, X.mean(axis=0), atol=1e-3))
    True
    """

    name = "gaussian"
    requires_targets = False
    scoring_converges = True  # measured: 3 passes to round-off (exponential family)
    metrics = ("model", "empirical", "loss-gradient", "energy")
    default_metric = "model"
    exact_metrics = ("model",)

    def __init__(self, n_features: int, *, init_mean=None, init_cov=None):
        super().__init__(n_features)
        d = self.n_features
        self.init_mean = None if init_mean is None else \
            as_float64_vector(init_mean, "init_mean", d).copy()
        self.init_cov = None
        if init_cov is not None:
            cov = np.array(init_cov, dtype=np.float64)
            if cov.shape != (d, d):
                raise ValueError(f"init_cov must have shape ({d}, {d}), got {cov.shape}")
            try:
                self.factor(self.pack(np.zeros(d), cov))
            except (NotPositiveDefiniteError, ValueError) as exc:
                raise ValueError(f"init_cov must be a symmetric positive definite matrix: {exc}"
                                 ) from None
            self.init_cov = cov
        if self.init_mean is not None and not np.all(np.isfinite(self.init_mean)):
            raise ValueError("init_mean has non-finite entries")

    @property
    def n_params(self) -> int:
        return self.n_features + n_vech(self.n_features)

    @property
    def penalized_indices(self) -> tuple[int, ...]:
        """None: a penalty toward a zero covariance would leave the model's domain."""
        return ()

    def param_groups(self):
        """The mean and the covariance."""
        d = self.n_features
        return [("mean", 0, d), ("cov", d, self.n_params)]

    def config(self):
        out = super().config()
        if self.init_mean is not None:
            out["init_mean"] = self.init_mean.tolist()
        if self.init_cov is not None:
            out["init_cov"] = self.init_cov.tolist()
        return out

    def init_params(self) -> np.ndarray:
        """``init_mean`` and ``init_cov`` when given, else ``μ = 0`` and ``Σ = I``."""
        d = self.n_features
        return self.pack(np.zeros(d) if self.init_mean is None else self.init_mean,
                         np.eye(d) if self.init_cov is None else self.init_cov)

    def initial_params(self, X, y, w):
        """θ at the (weighted) mean and covariance of the first batch.

        The learner calls this on the first batch of a run started without ``theta0`` (see
        :meth:`Model.initial_params`); it returns None, keeping :meth:`init_params`, when
        ``init_mean`` or ``init_cov`` was given.
        """
        if self.init_mean is not None or self.init_cov is not None:
            return None
        if w is not None and not float(np.sum(w)) > 0:
            return None  # the learner reports the zero-weight batch itself
        start = self.init_from_sample(self.check_X(X), w)
        return self.pack(start["init_mean"], start["init_cov"])

    @staticmethod
    def init_from_sample(X, w=None) -> dict:
        """Initial-value options from a sample of rows: its mean and covariance.

        Parameters
        ----------
        X : array_like, shape (m, d)
            A few rows of the data (a batch is enough).
        w : array_like, shape (m,), optional
            Non-negative row weights.

        Returns
        -------
        dict
            ``{"init_mean": list, "init_cov": list}`` for the constructor. The biased sample
            covariance is ridged by ``INIT_RIDGE · tr/d`` if it is singular (``m <= d``).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"X must have shape (m >= 1, d), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("the sample has non-finite values")
        d = X.shape[1]
        wt = np.ones(X.shape[0]) if w is None else as_float64_vector(w, "w", X.shape[0])
        if not (np.all(wt >= 0) and wt.sum() > 0):
            raise ValueError("weights must be >= 0 with a positive sum")
        wt = wt / wt.sum()
        mean = wt @ X
        R = X - mean
        cov = (R * wt[:, None]).T @ R
        scale = float(np.trace(cov)) / d
        ridge = INIT_RIDGE * (scale if scale > 0 else 1.0)
        cov = 0.5 * (cov + cov.T)
        while True:
            try:
                scipy.linalg.cholesky(cov, lower=True)
                break
            except np.linalg.LinAlgError:
                cov = cov + ridge * np.eye(d)
                ridge *= 10.0
        return {"init_mean": mean.tolist(), "init_cov": cov.tolist()}

    @classmethod
    def options_from_data(cls, group, source, options):
        """Start at the mean and covariance of the first :data:`INIT_ROWS` rows.

        From the default ``μ = 0, Σ = I`` the learner's first step (``η = 1``) sets ``Σ`` to
        the scatter of the first batch about 0, ``C + x̄x̄ᵀ``; the harmonic schedule then
        averages that bias away only as ``1/t``, and while ``Σ`` shrinks from it the
        whitener lags and can step out of the positive definite cone. Starting near the
        data avoids both (see the tests).
        """
        X = getattr(source, "X", None)
        n = getattr(source, "n_rows", None)
        if X is None or not n:
            return {}
        return cls.init_from_sample(np.asarray(X[:min(int(n), INIT_ROWS)]))

    # -- layout -------------------------------------------------------------------------
    def pack(self, mean, cov) -> np.ndarray:
        """θ from a mean (d,) and a symmetric covariance (d, d)."""
        d = self.n_features
        mean = as_float64_vector(mean, "mean", d)
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}), got {cov.shape}")
        if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-14 * np.max(np.abs(cov), initial=0)):
            raise ValueError("cov must be symmetric")
        return np.concatenate([mean, vech(cov)])

    def unpack(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """``(μ, Σ)`` from θ: shapes (d,) and (d, d)."""
        theta = as_float64_vector(theta, "theta", self.n_params)
        d = self.n_features
        return theta[:d].copy(), unvech(theta[d:], d)

    def params_to_dict(self, theta):
        mean, cov = self.unpack(theta)
        return {"mean": mean.tolist(), "cov": cov.tolist()}

    def factor(self, theta) -> tuple[np.ndarray, np.ndarray, float]:
        """``(μ, Σ⁻¹, ½ log det(2πΣ))`` at θ.

        Raises
        ------
        NotPositiveDefiniteError
            When θ is not finite or its ``Σ`` has no Cholesky factor.
        """
        mean, cov = self.unpack(theta)
        if not np.all(np.isfinite(cov)) or not np.all(np.isfinite(mean)):
            raise NotPositiveDefiniteError("θ has non-finite entries")
        try:
            L = scipy.linalg.cholesky(cov, lower=True)
        except np.linalg.LinAlgError:
            lam = np.linalg.eigvalsh(cov)
            raise NotPositiveDefiniteError(
                f"the covariance Σ is not positive definite (eigenvalues from {lam[0]:.3g} to "
                f"{lam[-1]:.3g}); if a learning step left the cone of covariance matrices, "
                "start nearer the data (Gaussian.init_from_sample) or use a smaller lr"
            ) from None
        Linv = scipy.linalg.solve_triangular(L, np.eye(self.n_features), lower=True)
        prec = Linv.T @ Linv
        prec = np.ascontiguousarray(0.5 * (prec + prec.T))
        half_logdet = float(np.sum(np.log(np.diag(L))))
        const = half_logdet + 0.5 * self.n_features * math.log(2.0 * math.pi)
        return mean, prec, const

    def check_params(self, theta) -> None:
        """Raise :class:`NotPositiveDefiniteError` unless θ is a valid ``(μ, Σ)``."""
        self.factor(theta)

    # -- per-row terms ------------------------------------------------------------------
    def row_terms(self, X, y, theta, *, metric, rng=None, mc_samples=1, w=None, parallel=None):
        X = self.check_X(X)
        mean, prec, const = self.factor(theta)
        n, P = X.shape[0], self.n_params
        loss = np.empty(n)
        grad = np.empty((n, P))
        want_energy = metric == "energy"
        energy = np.empty((n, 1, P)) if want_energy else _DUMMY_ENERGY
        if self.use_parallel(n, parallel):
            u = np.empty((num_threads(), self.n_features))
            K.gaussian_row_terms_parallel(X, mean, prec, const, want_energy, loss, grad,
                                          energy, u)
        else:
            u = np.empty((1, self.n_features))
            K.gaussian_row_terms(X, mean, prec, const, want_energy, loss, grad, energy, u)
        if metric is None:
            return RowTerms(loss, grad)
        if metric == "model":
            G = np.empty((P, P))
            K.gaussian_fisher(prec, G)
            return RowTerms(loss, grad, constant_metric=G)
        if metric == "energy":
            return RowTerms(loss, grad, factors=energy)
        return RowTerms(loss, grad, factors=self.generic_factors(X, y, theta, grad, metric,
                                                                 rng, mc_samples))

    def model_fisher(self, X, theta, w=None):
        """The closed-form model Fisher at θ, shape (P, P) (it does not depend on ``X``)."""
        _, prec, _ = self.factor(theta)
        G = np.empty((self.n_params, self.n_params))
        K.gaussian_fisher(prec, G)
        return G

    def sample(self, theta, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` rows drawn from ``N(μ, Σ)``, shape (n, d)."""
        mean, cov = self.unpack(theta)
        self.factor(theta)
        L = np.linalg.cholesky(cov)
        return mean + rng.standard_normal((int(n), self.n_features)) @ L.T

    # -- evaluation -----------------------------------------------------------------------
    def evaluation_sums(self, X, y, theta):
        X = self.check_X(X)
        mean, prec, const = self.factor(theta)
        return {"n": float(X.shape[0]), "nll": K.gaussian_evaluate(X, mean, prec, const)}

    def evaluation_metrics(self, sums):
        """``n`` and the mean negative log-likelihood ``nll`` (nats per row)."""
        n = sums["n"]
        return {"n": int(n), "nll": sums["nll"] / n}
