"""Independent component analysis by maximum likelihood with Amari's natural gradient.

Model
-----
``x = A s`` with independent sources; the model learns the square unmixing matrix ``W``
(``s = W x``, ideally ``W = A⁻¹`` up to permutation and scale of the rows) with
``θ = vec(W)`` row-major (``W[a, b]`` at ``a·d + b``). Source prior: the super-Gaussian
family ``p(s) = cosh(βs)^{−1/β} / Z_β`` with score function ``ψ(s) = tanh(βs)`` and
``Z_β = B(1/(2β), ½)/β``. The default ``sharpness`` ``β = ½`` is the **logistic density**
``p(s) = 1/(4 cosh²(s/2))``, ``log p(s) = −2 log cosh(s/2) − log 4`` (excess kurtosis 1.2):
the classic infomax choice, which separates super-Gaussian sources such as Laplace ones;
larger ``β`` gives sharper priors that tend to the Laplace density (``β → ∞``) and estimate
Laplace-like sources more efficiently. Loss per row (the negative log-likelihood of ``x``)::

    l(x; W) = −log|det W| − Σ_a log p(w_a · x),      ∂l/∂W = ψ(W x) xᵀ − W⁻ᵀ.

Centering: the model has no offset, so it assumes **zero-mean data** (centre the data
first; the synthetic ``ica`` task is zero-mean). Scale: it learns the scale of each
source, but the ``amari`` metric does not depend on the data, so the learner's whitener
does *not* remove the data's scale. A fit starts at ``W = I/√v``, ``v`` the mean feature
variance of the first rows (:meth:`ICA.initial_params` for the learner's first batch,
:meth:`ICA.options_from_data` for the command line), or at ``init_scale · I`` when given;
this makes the result independent of the data's units (Amari's rule is equivariant:
``W A`` evolves independently of ``A``).

Metrics
-------
``amari`` (default)
    Amari's rule (paper eq. 43), ``ΔW ∝ −(∂J/∂W) WᵀW``: the metric
    ``G = I_d ⊗ (WᵀW)⁻¹`` in the row-major layout, so that ``G⁻¹ vec(M) = vec(M WᵀW)``.
    It depends on θ only (a :attr:`RowTerms.constant_metric`) and is block-diagonal over
    the rows of ``W`` (the parameter groups), so ``structure="block"`` is exact and costs
    ``d`` inverses of ``d × d`` blocks instead of one of ``d² × d²``.
``empirical`` / ``loss-gradient``
    ``⟨∇l ∇lᵀ⟩`` over the data (eq. 31/39, equal here).

Step size
---------
Amari's metric is not the Hessian: at the solution, in its whitened coordinates, the
Hessian of the loss has eigenvalues from about 0.27 (rotations of a pair of sources) to 2.3
for Laplace sources and the logistic prior. The learner's default harmonic step
``η = b/t`` therefore moves far too little, both away from the start (the total "time"
``Σ η`` grows only like ``log t``) and near the solution (the error decays like
``t^-0.27``): after 5 passes over 20,000 rows the Amari distance of ``W A`` is still 0.5.
Use ``step_schedule="sqrt"`` (``Σ η ~ 2√t``): 20–30 passes separate the sources to about
FastICA's accuracy. To converge further, continue from that θ with ``metric="empirical"``
and the default harmonic step (near the solution the empirical metric is close to the
Hessian, so ``b/t`` is the efficient step); started far away, the empirical metric stalls
or overshoots.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from natgrad_stream._jit import num_threads
from natgrad_stream.models import _ica_kernels as K
from natgrad_stream.models.base import as_float64_vector
from natgrad_stream.models.factor import FactorModel, RowTerms

#: Rows of the training data that set ``init_scale`` (and the centering check) of a
#: command-line fit.
INIT_ROWS = 4096
#: :meth:`ICA.options_from_data` warns when a feature's mean exceeds this many standard
#: deviations (or 6/√rows, whichever is larger: the sampling noise of the check).
CENTER_TOLERANCE = 0.1
#: ``β`` of the logistic density ``1/(4 cosh²(s/2))``, the default source prior.
LOGISTIC_SHARPNESS = 0.5


class SingularUnmixingError(ValueError):
    """θ holds an unmixing matrix ``W`` that is singular (or not finite)."""


class ICA(FactorModel):
    """Maximum-likelihood ICA with a super-Gaussian source prior; see the module docstring.

    Parameters
    ----------
    n_features : int
        Number ``d`` of mixtures (and of sources); ``P = d²`` parameters.
    init_scale : float, optional
        Initial unmixing matrix ``W = init_scale · I`` (> 0). When None (the default),
        ``W = I`` or, when the learner asks for a data-informed start
        (:meth:`initial_params`), ``I/√(mean feature variance)`` of the first batch.
    sharpness : float
        ``β`` of the source prior (> 0); ½ is the logistic density.

    Examples
    --------
    >>> model = ICA(2)
    >>> model.unmixing(model.init_params())
    array([[1., 0.],
           [0., 1.]])
    """

    name = "ica"
    requires_targets = False
    metrics = ("amari", "empirical", "loss-gradient")
    default_metric = "amari"
    #: In Amari-whitened coordinates the Hessian's eigenvalues span about 0.27–2.3, so the
    #: harmonic b/t step moves far too little (Amari distance 0.56 after 5 passes where
    #: FastICA reaches 0.007); the 1/√t schedule reaches FastICA's accuracy in 20–30 passes.
    learner_defaults = {"step_schedule": "sqrt", "refine": "lbfgs"}  # noqa: RUF012

    def __init__(self, n_features: int, *, init_scale: float | None = None,
                 sharpness: float = LOGISTIC_SHARPNESS):
        super().__init__(n_features)
        for name, v in (("init_scale", 1.0 if init_scale is None else init_scale),
                        ("sharpness", sharpness)):
            if not (isinstance(v, (int, float, np.floating, np.integer))
                    and math.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        self.init_scale = None if init_scale is None else float(init_scale)
        self.sharpness = float(sharpness)
        b = self.sharpness
        #: ``log Z_β`` of the source prior.
        self.log_normalizer = (math.lgamma(0.5 / b) + math.lgamma(0.5)
                               - math.lgamma(0.5 / b + 0.5) - math.log(b))

    @property
    def n_params(self) -> int:
        return self.n_features * self.n_features

    def param_groups(self):
        """One group per row ``w_a`` of ``W`` (the ``amari`` metric is block-diagonal)."""
        d = self.n_features
        return [(f"W[{a}]", a * d, (a + 1) * d) for a in range(d)]

    def config(self):
        out = super().config()
        if self.init_scale is not None:
            out["init_scale"] = self.init_scale
        if self.sharpness != LOGISTIC_SHARPNESS:
            out["sharpness"] = self.sharpness
        return out

    def log_prior(self, s) -> np.ndarray:
        """``log p(s)`` elementwise (NumPy; the kernels compute the same in float64)."""
        s = np.abs(np.asarray(s, dtype=np.float64))
        b = self.sharpness
        return -(s + (np.log1p(np.exp(-2.0 * b * s)) - math.log(2.0)) / b + self.log_normalizer)

    def init_params(self) -> np.ndarray:
        """``vec(init_scale · I)`` (``init_scale`` 1 when not given)."""
        scale = 1.0 if self.init_scale is None else self.init_scale
        return (scale * np.eye(self.n_features)).ravel()

    def initial_params(self, X, y, w):
        """``vec(I/√v)`` with ``v`` the mean (weighted) feature variance of the first batch.

        The learner calls this on the first batch of a run started without ``theta0`` (see
        :meth:`Model.initial_params`); None (keep :meth:`init_params`) when ``init_scale`` was
        given or the batch has no spread.
        """
        if self.init_scale is not None:
            return None
        X = self.check_X(X).astype(np.float64)
        wt = np.ones(X.shape[0]) if w is None else as_float64_vector(w, "w", X.shape[0])
        if not wt.sum() > 0:
            return None
        wt = wt / wt.sum()
        var = float(np.mean(wt @ (X - wt @ X) ** 2))
        if not (math.isfinite(var) and var > 0):
            return None
        return (np.eye(self.n_features) / math.sqrt(var)).ravel()

    @classmethod
    def options_from_data(cls, group, source, options):
        """``init_scale = 1/√(mean feature variance)`` of the first :data:`INIT_ROWS` rows,
        and ``sharpness`` when given (``--sharpness``).

        Warns when the data do not look centred (the model assumes zero-mean data).
        """
        given = {} if options.get("sharpness") is None else \
            {"sharpness": float(options["sharpness"])}
        X = getattr(source, "X", None)
        n = getattr(source, "n_rows", None)
        if X is None or not n:
            return given
        sample = np.asarray(X[:min(int(n), INIT_ROWS)], dtype=np.float64)
        mean = sample.mean(axis=0)
        std = sample.std(axis=0)
        var = float(np.mean(std * std))
        if not (math.isfinite(var) and var > 0):
            return given
        ratio = np.abs(mean) / np.where(std > 0, std, 1.0)
        tol = max(CENTER_TOLERANCE, 6.0 / math.sqrt(sample.shape[0]))
        if np.max(ratio) > tol:
            j = int(np.argmax(ratio))
            warnings.warn(
                f"ICA assumes zero-mean data, but feature {j} has mean {mean[j]:.4g} "
                f"({ratio[j]:.3g} standard deviations) over the first {sample.shape[0]} rows; "
                "centre the data first", RuntimeWarning, stacklevel=2)
        return {"init_scale": 1.0 / math.sqrt(var), **given}

    # -- layout -------------------------------------------------------------------------
    def unmixing(self, theta) -> np.ndarray:
        """``W`` from θ, shape (d, d)."""
        d = self.n_features
        return as_float64_vector(theta, "theta", self.n_params).reshape(d, d).copy()

    def check_params(self, theta) -> None:
        """Raise :class:`SingularUnmixingError` unless ``W`` is finite and non-singular."""
        self.factor(theta)

    def params_to_dict(self, theta):
        return {"W": self.unmixing(theta).tolist()}

    def factor(self, theta) -> tuple[np.ndarray, np.ndarray, float]:
        """``(W, W⁻¹, log|det W|)`` at θ.

        Raises
        ------
        SingularUnmixingError
            When ``W`` is not finite or is singular to working precision.
        """
        W = self.unmixing(theta)
        if not np.all(np.isfinite(W)):
            raise SingularUnmixingError("the unmixing matrix W has non-finite entries")
        sign, logabsdet = np.linalg.slogdet(W)
        cond = np.linalg.cond(W)
        if sign == 0 or not math.isfinite(logabsdet) or not cond < 1.0 / np.finfo(float).eps:
            raise SingularUnmixingError(
                f"the unmixing matrix W is singular (condition number {cond:.3g}); the "
                "sources cannot be recovered from it")
        return W, np.linalg.inv(W), float(logabsdet)

    def sources(self, X, theta) -> np.ndarray:
        """Recovered sources ``s = W x`` for each row, shape (n, d)."""
        X = self.check_X(X)
        return X.astype(np.float64) @ self.unmixing(theta).T

    def amari_metric(self, theta) -> np.ndarray:
        """``G = I_d ⊗ (WᵀW)⁻¹``, shape (d², d²): Amari's metric (eq. 43) in the layout."""
        _, Winv, _ = self.factor(theta)
        B = Winv @ Winv.T
        return np.kron(np.eye(self.n_features), 0.5 * (B + B.T))

    # -- per-row terms ------------------------------------------------------------------
    def row_terms(self, X, y, theta, *, metric, rng=None, mc_samples=1, w=None, parallel=None):
        X = self.check_X(X)
        W, Winv, logabsdet = self.factor(theta)
        WinvT = np.ascontiguousarray(Winv.T)
        n, d = X.shape
        loss = np.empty(n)
        grad = np.empty((n, self.n_params))
        if self.use_parallel(n, parallel):
            K.ica_row_terms_parallel(X, W, WinvT, logabsdet, self.sharpness,
                                     self.log_normalizer, loss, grad,
                                     np.empty((num_threads(), d)))
        else:
            K.ica_row_terms(X, W, WinvT, logabsdet, self.sharpness, self.log_normalizer, loss,
                            grad, np.empty((1, d)))
        if metric is None:
            return RowTerms(loss, grad)
        if metric == "amari":
            B = Winv @ Winv.T
            return RowTerms(loss, grad, constant_metric=np.kron(np.eye(d), 0.5 * (B + B.T)))
        return RowTerms(loss, grad, factors=self.generic_factors(X, y, theta, grad, metric,
                                                                 rng, mc_samples))

    def model_fisher(self, X, theta, w=None):
        """Not available: ICA's Fisher has no closed form here; use ``metric="amari"``."""
        raise ValueError("model 'ica' has no closed-form model Fisher; its metrics are "
                         f"{', '.join(self.metrics)}")

    # -- evaluation -----------------------------------------------------------------------
    def evaluation_sums(self, X, y, theta):
        X = self.check_X(X)
        W, _, logabsdet = self.factor(theta)
        nll = K.ica_evaluate(X, W, logabsdet, self.sharpness, self.log_normalizer)
        return {"n": float(X.shape[0]), "nll": nll}

    def evaluation_metrics(self, sums):
        """``n`` and the mean log-likelihood per row ``log_likelihood`` (nats)."""
        n = sums["n"]
        return {"n": int(n), "log_likelihood": -sums["nll"] / n}


def amari_distance(P) -> float:
    """Amari's performance index of a square matrix ``P = W A``, in ``[0, 1]``.

    Zero exactly when ``P`` is a scaled permutation (perfect separation)::

        (1 / (2d(d−1))) [Σ_i (Σ_j |p_ij| / max_j |p_ij| − 1)
                         + Σ_j (Σ_i |p_ij| / max_i |p_ij| − 1)]
    """
    P = np.abs(np.asarray(P, dtype=np.float64))
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 2:
        raise ValueError(f"P must be a square matrix with d >= 2, got shape {P.shape}")
    d = P.shape[0]
    rows = np.sum(P.sum(axis=1) / P.max(axis=1) - 1.0)
    cols = np.sum(P.sum(axis=0) / P.max(axis=0) - 1.0)
    return float((rows + cols) / (2.0 * d * (d - 1)))
