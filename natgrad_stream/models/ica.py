"""Independent component analysis by maximum likelihood with Amari's natural gradient.

Model
-----
``x = A s`` with independent sources; the model learns the square unmixing matrix ``W``
(``s = W x``, ideally ``W = A⁻¹`` up to permutation and scale of the rows). Loss per row
(the negative log-likelihood of ``x``)::

    l(x; θ) = −log|det W| − Σ_a log p_a(w_a · x),      ∂l/∂W = ψ(W x) xᵀ − W⁻ᵀ.

Source densities (``density``):

``adaptive`` (the default)
    One shape ``α_a`` and one location ``μ_a`` per source, learned with ``W`` by maximum
    likelihood: the smoothed exponential-power family
    ``−log p(s) = ((s − μ)² + ε²)^{α/2}/α + log Z(α)`` of
    :mod:`natgrad_stream.models.ica_density`, Gaussian at ``α = 2``, super-Gaussian below
    (a smoothed Laplace at ``α = 1``), sub-Gaussian above (flat-topped at ``α = 10``).
    ``θ = [vec(W), κ, μ]`` with ``α = 1 + 9 sin²κ``, ``P = d² + 2d``; a fit starts Gaussian
    and centred (``α = 2``, ``μ = 0``). A fixed super-Gaussian prior cannot separate
    sub-Gaussian sources; this one can (uniform, bimodal, Laplace, Student-t and gamma
    sources in ``tests/test_ica.py``), and on Laplace sources, whose shapes go to the
    Laplace end, it is more efficient (model panel: Amari 0.0018 against the logistic
    prior's 0.0025 and FastICA's best 0.0023); the locations fit skewed sources (the
    panel's image mix: 0.0015 against 0.00305 without them and FastICA's best 0.0025).
    Runs recorded before the locations existed load without them (``location=False``,
    ``μ = 0``, ``P = d² + d``). Its likelihood has local optima: on the panel's image mix
    (quantized pixel values) a fit from the whitening alone ended at one that separates only
    one source of three (Amari 0.23, measured before the locations); the default start
    avoids it (:meth:`ICA.initial_params`).
``sech``
    The fixed super-Gaussian family ``p(s) = cosh(βs)^{−1/β} / Z_β`` with score function
    ``ψ(s) = tanh(βs)``, ``Z_β = B(1/(2β), ½)/β``, ``θ = vec(W)``. ``sharpness`` ``β = ½``
    is the **logistic density** ``1/(4 cosh²(s/2))`` (excess kurtosis 1.2), the classic
    infomax prior; larger ``β`` tends to the Laplace density. Runs recorded before the
    adaptive density existed load with this one.

``θ`` stores ``W`` row-major (``W[a, b]`` at ``a·d + b``), then the shapes and the
locations (``adaptive``).

Centering: the model has no offset, so it assumes **zero-mean data** (centre the data
first; the synthetic ``ica`` task is zero-mean). Scale: it learns the scale of each
source, but the ``amari`` metric does not depend on the data, so the learner's whitener
does *not* remove the data's scale. A fit starts from the first batch
(:meth:`ICA.initial_params`): at the whitening ``W = C^{-1/2}`` of its covariance with the
adaptive density, at ``W = I/√v``, ``v`` the mean feature variance, with ``sech`` (on the
command line from the first rows, :meth:`ICA.options_from_data`); or at
``init_scale · I`` when given. This makes the result independent of the data's units
(Amari's rule is equivariant: ``W A`` evolves independently of ``A``).

Metrics
-------
``amari`` (default)
    Amari's rule (paper eq. 43), ``ΔW ∝ −(∂J/∂W) WᵀW``: the metric
    ``G = I_d ⊗ (WᵀW)⁻¹`` in the row-major layout, so that ``G⁻¹ vec(M) = vec(M WᵀW)``;
    with the adaptive density, the shapes' block is diagonal, the Fisher information of
    ``α_a`` for one source value times ``(dα/dκ)²`` plus a floor
    (:data:`~natgrad_stream.models.ica_density.SHAPE_METRIC_FLOOR`), and so is the
    locations', the Fisher information ``E_p[ψ²]`` of ``μ_a``. It depends on θ
    only (a :attr:`RowTerms.constant_metric`) and is block-diagonal over the rows of ``W``
    and the shapes (the parameter groups), so ``structure="block"`` is exact and costs
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
from natgrad_stream.models import ica_density as D
from natgrad_stream.models.base import as_float64_vector
from natgrad_stream.models.factor import FactorModel, RowTerms

#: Rows of the training data that set ``init_scale`` (and the centering check) of a
#: command-line fit.
INIT_ROWS = 4096
#: :meth:`ICA.options_from_data` warns when a feature's mean exceeds this many standard
#: deviations (or 6/√rows, whichever is larger: the sampling noise of the check).
CENTER_TOLERANCE = 0.1
#: ``β`` of the logistic density ``1/(4 cosh²(s/2))``, the default ``sech`` prior.
LOGISTIC_SHARPNESS = 0.5
#: The source densities (the first is the default).
DENSITIES = ("adaptive", "sech")
#: Step scale ``lr`` of the first (streaming) pass with learned locations. On the model
#: panel's image mix the digits' shape rises to the flat top (α = 10) within that pass, where
#: the score ``ψ(u) ∝ u⁹`` is steep, and with ``lr = 1`` the steps made ``W`` singular (at
#: batch sizes 256, 1024 and 4096, in the stored and in a shuffled row order); with 0.5 and
#: 0.3 every one of these fits converged, in 32–54 passes.
LOCATED_LR = 0.5


class SingularUnmixingError(ValueError):
    """θ holds an unmixing matrix ``W`` that is singular (or not finite)."""


class ICA(FactorModel):
    """Maximum-likelihood ICA with an adaptive (or fixed) source density; see the module
    docstring.

    Parameters
    ----------
    n_features : int
        Number ``d`` of mixtures (and of sources); ``P = d² + 2d`` parameters with the
        adaptive density (``d² + d`` without locations), ``d²`` with ``sech``.
    init_scale : float, optional
        Initial unmixing matrix ``W = init_scale · I`` (> 0). When None (the default),
        ``W = I`` or, when the learner asks for a data-informed start
        (:meth:`initial_params`), ``I/√(mean feature variance)`` of the first batch.
    density : {"adaptive", "sech"}, optional
        Source density (default ``adaptive``, or ``sech`` when ``sharpness`` is given).
    sharpness : float, optional
        ``β`` of the ``sech`` density (> 0, default ½: the logistic density).
    location : bool, optional
        Whether the adaptive density learns a location per source (default True; False is
        the density of runs recorded before the locations existed).

    Examples
    --------
    >>> model = ICA(2)
    >>> model.unmixing(model.init_params())
    array([[1., 0.],
           [0., 1.]])
    >>> model.shapes(model.init_params())  # Gaussian at the start
    array([2., 2.])
    """

    name = "ica"
    requires_targets = False
    metrics = ("amari", "empirical", "loss-gradient")
    default_metric = "amari"
    exact_metrics = ("amari",)
    #: In Amari-whitened coordinates the Hessian's eigenvalues span about 0.27–2.3, so the
    #: harmonic b/t step moves far too little (Amari distance 0.56 after 5 passes where
    #: FastICA reaches 0.007); the 1/√t schedule reaches FastICA's accuracy in 20–30 passes.
    BASE_LEARNER_DEFAULTS = {"step_schedule": "sqrt", "refine": "lbfgs"}  # noqa: RUF012
    #: The L-BFGS hand-over with the adaptive density converged in 25–158 passes on the
    #: model panel's data and 12 random mixtures of sub- and super-Gaussian sources
    #: (``tests/test_ica.py``); the shapes and locations make the problem harder than a
    #: GLM's.
    auto_max_epochs = 200

    def __init__(self, n_features: int, *, init_scale: float | None = None,
                 density: str | None = None, sharpness: float | None = None,
                 location: bool | None = None):
        super().__init__(n_features)
        if density is None:
            density = "adaptive" if sharpness is None else "sech"
        if density not in DENSITIES:
            raise ValueError(f"density must be one of {', '.join(DENSITIES)}, got {density!r}")
        if density == "adaptive" and sharpness is not None:
            raise ValueError("sharpness applies to density 'sech' only (the adaptive density "
                             "learns each source's shape)")
        if location is not None and not isinstance(location, (bool, np.bool_)):
            raise ValueError(f"location must be True or False, got {location!r}")
        if density == "sech" and location:
            raise ValueError("location applies to density 'adaptive' only")
        #: Whether each source's location ``μ_a`` is learned (adaptive density).
        self.location = density == "adaptive" and (location is None or bool(location))
        for name, v in (("init_scale", 1.0 if init_scale is None else init_scale),
                        ("sharpness", LOGISTIC_SHARPNESS if sharpness is None else sharpness)):
            if not (isinstance(v, (int, float, np.floating, np.integer))
                    and not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        self.init_scale = None if init_scale is None else float(init_scale)
        self.density = density
        self.sharpness = LOGISTIC_SHARPNESS if sharpness is None else float(sharpness)
        b = self.sharpness
        #: ``log Z_β`` of the ``sech`` prior.
        self.log_normalizer = (math.lgamma(0.5 / b) + math.lgamma(0.5)
                               - math.lgamma(0.5 / b + 0.5) - math.log(b))

    @classmethod
    def from_config(cls, n_features: int, **config) -> ICA:
        """Rebuild from :meth:`config`; a config without ``density`` was recorded before
        the adaptive density existed and means ``sech``, an adaptive one without
        ``location`` before the locations existed (``μ = 0``, not in θ).
        """
        config.setdefault("density", "sech")
        if config["density"] == "adaptive":
            config.setdefault("location", False)
        return cls(n_features, **config)

    @property
    def learner_defaults(self) -> dict:
        """:attr:`BASE_LEARNER_DEFAULTS`, and with learned locations the first pass's step
        scale :data:`LOCATED_LR`.
        """
        out = dict(self.BASE_LEARNER_DEFAULTS)
        if self.location:
            out["lr"] = LOCATED_LR
        return out

    @property
    def adaptive(self) -> bool:
        """Whether each source's shape is learned (``density="adaptive"``)."""
        return self.density == "adaptive"

    @property
    def n_params(self) -> int:
        d = self.n_features
        return d * d + (d if self.adaptive else 0) + (d if self.location else 0)

    @property
    def penalized_indices(self) -> tuple[int, ...]:
        """The unmixing matrix ``W`` (not the source shapes)."""
        return tuple(range(self.n_features * self.n_features))

    def param_groups(self):
        """One group per row ``w_a`` of ``W`` (the ``amari`` metric is block-diagonal), and
        the shapes ``κ`` and locations ``μ`` (adaptive density).
        """
        d = self.n_features
        groups = [(f"W[{a}]", a * d, (a + 1) * d) for a in range(d)]
        if self.adaptive:
            groups.append(("shape", d * d, d * d + d))
        if self.location:
            groups.append(("location", d * d + d, d * d + 2 * d))
        return groups

    def config(self):
        out = {**super().config(), "density": self.density}
        if self.location:  # (absent: a run recorded before the locations, μ = 0)
            out["location"] = True
        if self.init_scale is not None:
            out["init_scale"] = self.init_scale
        if not self.adaptive and self.sharpness != LOGISTIC_SHARPNESS:
            out["sharpness"] = self.sharpness
        return out

    def log_prior(self, s, theta=None) -> np.ndarray:
        """``log p(s)`` elementwise, shape of ``s`` (NumPy; the kernels compute the same).

        With the adaptive density, ``s`` is (n, d) or (d,) and the shapes come from
        ``theta``.
        """
        if self.adaptive:
            if theta is None:
                raise ValueError("the adaptive density's log p(s) needs theta (the shapes)")
            return D.log_density(s, self.shapes(theta), self.locations(theta))
        s = np.abs(np.asarray(s, dtype=np.float64))
        b = self.sharpness
        return -(s + (np.log1p(np.exp(-2.0 * b * s)) - math.log(2.0)) / b + self.log_normalizer)

    def _with_shapes(self, W: np.ndarray | None) -> np.ndarray | None:
        if W is None:
            return None
        shapes = np.full(self.n_features if self.adaptive else 0, D.param_from_shape(2.0))
        return np.r_[W.ravel(), shapes, np.zeros(self.n_features if self.location else 0)]

    def init_params(self) -> np.ndarray:
        """``vec(init_scale · I)`` (``init_scale`` 1 when not given), then Gaussian shapes
        (``α = 2``) and locations 0 with the adaptive density.
        """
        scale = 1.0 if self.init_scale is None else self.init_scale
        return self._with_shapes(scale * np.eye(self.n_features))

    def initial_params(self, X, y, w):
        """:meth:`init_params` with ``W`` from the first batch's (weighted) covariance ``C``:
        with the adaptive density ``R C^{-1/2}``, the symmetric whitening followed by the
        rotation ``R`` that maximizes the batch's log-cosh contrast
        (:func:`_contrast_rotation`, symmetric FastICA's fixed point); with ``sech``
        ``I/√v``, ``v`` the mean feature variance. Eigenvalues of ``C`` below ``1e-12`` of the
        largest are floored there.

        The whitening makes the sources start uncorrelated with unit variance, so the first
        steps only rotate (an unwhitened start let the Gaussian start's unbounded score
        ``ψ(s) = s`` make ``W`` singular on ill-conditioned mixtures). The rotation puts the
        start in the separating basin: from the whitening alone the maximum-likelihood fit
        of the panel's image mix ended at a local optimum separating one source of three
        (Amari 0.234, loss 1.0e-3 above), from ``R`` at the separating one (Amari 0.0030;
        0.0015 with the locations).

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
        Xc = X - wt @ X
        if self.adaptive:
            K = _whitening_matrix((Xc * wt[:, None]).T @ Xc)
            if K is None:
                return None
            return self._with_shapes(_contrast_rotation(Xc @ K.T, wt) @ K)
        var = float(np.mean(wt @ Xc**2))
        if not (math.isfinite(var) and var > 0):
            return None
        return self._with_shapes(np.eye(self.n_features) / math.sqrt(var))

    @classmethod
    def options_from_data(cls, group, source, options):
        """``density`` and ``sharpness`` when given (``--density``, ``--sharpness``), and with
        ``sech`` ``init_scale = 1/√(mean feature variance)`` of the first :data:`INIT_ROWS`
        rows (the adaptive density starts from the learner's first batch,
        :meth:`initial_params`).

        Warns when the data do not look centred (the model assumes zero-mean data).
        """
        given = {k: (float(v) if k == "sharpness" else v)
                 for k in ("density", "sharpness") if (v := options.get(k)) is not None}
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
        if given.get("density", "sech" if "sharpness" in given else "adaptive") == "adaptive":
            return given  # the learner whitens with the first batch (initial_params)
        return {"init_scale": 1.0 / math.sqrt(var), **given}

    # -- layout -------------------------------------------------------------------------
    def unmixing(self, theta) -> np.ndarray:
        """``W`` from θ, shape (d, d)."""
        d = self.n_features
        return as_float64_vector(theta, "theta", self.n_params)[:d * d].reshape(d, d).copy()

    def shapes(self, theta) -> np.ndarray:
        """The adaptive density's shapes ``α`` (see :func:`ica_density.shape_from_param`),
        shape (d,).
        """
        if not self.adaptive:
            raise ValueError("density 'sech' has no learned shapes")
        return D.shape_from_param(self._kappa(theta))[0]

    def locations(self, theta) -> np.ndarray:
        """The adaptive density's locations ``μ`` (zeros when not learned), shape (d,)."""
        if not self.adaptive:
            raise ValueError("density 'sech' has no learned locations")
        d = self.n_features
        theta = as_float64_vector(theta, "theta", self.n_params)
        return theta[d * d + d:].copy() if self.location else np.zeros(d)

    def check_params(self, theta) -> None:
        """Raise :class:`SingularUnmixingError` unless ``W`` is finite and non-singular, and
        ``ValueError`` unless the shapes and locations are finite.
        """
        self.factor(theta)
        if self.adaptive:
            self._kappa(theta)
            self._mu(theta)

    def params_to_dict(self, theta):
        out = {"W": self.unmixing(theta).tolist()}
        if self.adaptive:
            out["alpha"] = self.shapes(theta).tolist()
        if self.location:
            out["mu"] = self.locations(theta).tolist()
        return out

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

    def _kappa(self, theta) -> np.ndarray:
        """The shapes' parameters ``κ`` (d,); ``ValueError`` unless finite."""
        d = self.n_features
        kappa = as_float64_vector(theta, "theta", self.n_params)[d * d:d * d + d]
        if not np.all(np.isfinite(kappa)):
            raise ValueError(f"a source shape parameter is not finite: {kappa}")
        return kappa

    def _mu(self, theta) -> np.ndarray:
        """The locations ``μ`` (d,); ``ValueError`` unless finite."""
        mu = self.locations(theta)
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"a source location is not finite: {mu}")
        return mu

    def _density_terms(self, theta):
        """``(α, dα/dκ, log Z, ∂log Z/∂α, Fisher of κ, μ)`` of the adaptive density, each
        (d,).
        """
        alpha, slope = D.shape_from_param(self._kappa(theta))
        log_z, dlog_z, fisher = D.normalizer(alpha)
        return (alpha, slope, log_z, dlog_z, fisher * (slope**2 + D.SHAPE_METRIC_FLOOR),
                self._mu(theta))

    def sources(self, X, theta) -> np.ndarray:
        """Recovered sources ``s = W x`` for each row, shape (n, d)."""
        X = self.check_X(X)
        return X.astype(np.float64) @ self.unmixing(theta).T

    def amari_metric(self, theta, shape_fisher=None) -> np.ndarray:
        """Amari's metric (eq. 43) in the layout, shape (P, P): ``I_d ⊗ (WᵀW)⁻¹``, then the
        shapes' diagonal Fisher block (adaptive density; ``shape_fisher`` (d,) when already
        computed at θ) and the locations', ``E_p[ψ²]`` of each source's density at unit
        scale (:func:`ica_density.location_fisher`).
        """
        _, Winv, _ = self.factor(theta)
        B = Winv @ Winv.T
        G = np.kron(np.eye(self.n_features), 0.5 * (B + B.T))
        if not self.adaptive:
            return G
        d2 = G.shape[0]
        out = np.zeros((self.n_params, self.n_params))
        out[:d2, :d2] = G
        if shape_fisher is None:
            shape_fisher = self._density_terms(theta)[4]
        d = self.n_features
        out[d2:d2 + d, d2:d2 + d] = np.diag(shape_fisher)
        if self.location:
            out[d2 + d:, d2 + d:] = np.diag(D.location_fisher(self.shapes(theta)))
        return out

    # -- per-row terms ------------------------------------------------------------------
    def row_terms(self, X, y, theta, *, metric, rng=None, mc_samples=1, w=None, parallel=None):
        X = self.check_X(X)
        W, Winv, logabsdet = self.factor(theta)
        WinvT = np.ascontiguousarray(Winv.T)
        n, d = X.shape
        loss = np.empty(n)
        grad = np.empty((n, self.n_params))
        T = num_threads() if self.use_parallel(n, parallel) else 1
        scratch = np.empty((T, d))
        shape_fisher = None
        if self.adaptive:
            alpha, slope, log_z, dlog_z, shape_fisher, mu = self._density_terms(theta)
            kernel = K.ica_power_row_terms_parallel if T > 1 else K.ica_power_row_terms
            kernel(X, W, WinvT, logabsdet, alpha, mu, log_z, dlog_z, slope, D.SMOOTHING**2,
                   loss, grad, scratch)
        else:
            kernel = K.ica_row_terms_parallel if T > 1 else K.ica_row_terms
            kernel(X, W, WinvT, logabsdet, self.sharpness, self.log_normalizer, loss, grad,
                   scratch)
        if metric is None:
            return RowTerms(loss, grad)
        if metric == "amari":
            return RowTerms(loss, grad,
                            constant_metric=self.amari_metric(theta, shape_fisher))
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
        if self.adaptive:
            alpha, _, log_z, _, _, mu = self._density_terms(theta)
            nll = K.ica_power_evaluate(X, W, logabsdet, alpha, mu, log_z, D.SMOOTHING**2)
        else:
            nll = K.ica_evaluate(X, W, logabsdet, self.sharpness, self.log_normalizer)
        return {"n": float(X.shape[0]), "nll": nll}

    def evaluation_metrics(self, sums):
        """``n`` and the mean log-likelihood per row ``log_likelihood`` (nats)."""
        n = sums["n"]
        return {"n": int(n), "log_likelihood": -sums["nll"] / n}


#: Iterations and tolerance of :func:`_contrast_rotation` (FastICA's defaults: 200, 1e-4 on
#: ``|⟨r_new, r⟩| − 1``; here tighter, the batch being small and d low).
CONTRAST_ITERS = 200
CONTRAST_TOL = 1e-10


def _contrast_rotation(Z, wt) -> np.ndarray:
    """Orthogonal ``R`` (d, d) whose rows maximize the log-cosh contrast of whitened rows
    ``Z`` (n, d) weighted by ``wt`` (n,), summing to 1: symmetric FastICA's fixed point
    (Hyvärinen 1999), ``R ← (⟨g(RZ) zᵀ⟩ − diag⟨g′(RZ)⟩ R)`` then ``R ← (R Rᵀ)^{-1/2} R``,
    with ``g = tanh``, from ``R = I`` for at most :data:`CONTRAST_ITERS` iterations. The
    contrast separates sub- and super-Gaussian sources alike (its sign is free).
    """
    d = Z.shape[1]
    R = np.eye(d)
    for _ in range(CONTRAST_ITERS):
        g = np.tanh(Z @ R.T)
        new = (g * wt[:, None]).T @ Z - (wt @ (1.0 - g * g))[:, None] * R
        u, _, vt = np.linalg.svd(new)
        new = u @ vt
        if not np.all(np.isfinite(new)):
            return R
        done = float(np.max(np.abs(np.abs(np.sum(new * R, axis=1)) - 1.0))) < CONTRAST_TOL
        R = new
        if done:
            break
    return R


def _whitening_matrix(C) -> np.ndarray | None:
    """``C^{-1/2}`` of a covariance ``C`` (d, d), eigenvalues floored at 1e-12 of the
    largest; None when ``C`` has no spread or is not finite.
    """
    if not np.all(np.isfinite(C)):
        return None
    lam, V = np.linalg.eigh(0.5 * (C + C.T))
    top = float(lam[-1])
    if not top > 0:
        return None
    lam = np.maximum(lam, 1e-12 * top)
    return (V / np.sqrt(lam)) @ V.T


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
