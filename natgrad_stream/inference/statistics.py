"""From the pass's sums to the summary: covariances, tests, intervals, likelihood measures.

Conventions are statsmodels' (0.15), so that its users read the same numbers:

- **Model-based covariance** (``cov_type="nonrobust"``): the inverse of the Fisher
  information Σ wᵢ Gᵢ (the Hessian of the negative log-likelihood for the canonical links
  fitted here). ``linear`` is read as OLS: the covariance is σ̂²(X̃ᵀWX̃)⁻¹ with
  σ̂² = RSS / (n − p) (``scale``), its tests use Student's t with n − p degrees of freedom
  (statsmodels' ``OLS``), and its log-likelihood is the Gaussian one at σ̃² = RSS / n.
- **Robust covariance** (``HC0``): the sandwich A⁻¹ (Σ wᵢ sᵢsᵢᵀ) A⁻¹ with the per-row
  scores sᵢ, no small-sample correction, tested with the normal distribution (statsmodels'
  ``cov_type="HC0"``; for OLS too).
- **Penalized runs** (``l2 = λ > 0``): A = Fisher + (Σw)·λ·I_S, the Hessian of what the
  fit minimized. The model-based covariance is then scale·A⁻¹·Fisher·A⁻¹ and the robust one
  A⁻¹·meat·A⁻¹: the sandwich covariance of the penalized estimator around its own
  (shrunk) expectation, not around the unpenalized truth; ``cov_type`` says
  ``"nonrobust-penalized"`` / ``"HC0-penalized"``.
- **Weights** are frequency weights (statsmodels' GLM ``freq_weights``): ``n_obs`` is Σw.
- p = number of parameters (intercepts included). AIC = −2 llf + 2p, BIC = −2 llf +
  p·log(n_obs) (statsmodels' ``aic`` and, for GLMs, ``bic_llf``); ``df_model`` = p minus the
  intercepts, ``df_resid`` = n_obs − p.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from natgrad_stream.errors import DataError

#: The models with a likelihood ``summary`` reports on (registry names).
INFERENCE_MODELS = ("logistic", "linear", "poisson", "softmax")
#: Relative size, against the largest, of the smallest eigenvalue of the equilibrated
#: information below which it is reported singular (a coefficient the data do not
#: identify: a constant or collinear column).
SINGULAR_RCOND = 1e-13
#: A singular information's error names the coefficients whose share of its null
#: direction is at least this fraction of the largest.
NULL_DIRECTION_SHARE = 0.1
#: A Newton decrement ½gᵀA⁻¹g of the data at θ above this fraction of |llf| (at least 1)
#: adds a note that θ is not their optimum (e.g. other data than the fitted ones).
OFF_OPTIMUM_DECREMENT = 1e-6


def check_inference_model(model) -> None:
    """Raise ``ValueError`` (one line) for a model ``summary`` has no likelihood for."""
    if model.name not in INFERENCE_MODELS:
        raise ValueError(f"model {model.name!r} has no likelihood for standard "
                         f"errors and tests; summary supports {', '.join(INFERENCE_MODELS)}")


def coefficient_names(model, *, feature_names=None, class_names=None) -> list[str]:
    """Readable names in θ's order: ``x0 … x{d−1}, intercept`` (GLMs); softmax:
    ``x3[class 2]``, ``intercept[class 2]`` for each non-reference class (its category
    when ``class_names`` are given).
    """
    d = model.n_features
    feats = [f"x{j}" for j in range(d)] if feature_names is None else \
        [str(v) for v in feature_names]
    if len(feats) != d:
        raise ValueError(f"feature_names has {len(feats)} names; the model has {d} features")
    per_block = [*feats, "intercept"]
    if model.name != "softmax":
        return per_block
    K = model.n_classes
    labels = [str(c) for c in class_names] if class_names is not None else \
        [str(c) for c in range(K)]
    if len(labels) != K:
        raise ValueError(f"class_names has {len(labels)} names; the model has {K} classes")
    return [f"{v}[class {labels[c]}]" for c in range(1, K) for v in per_block]


def _equilibrated_inverse(A: np.ndarray, names: list[str]) -> np.ndarray:
    """``A⁻¹`` of a symmetric positive definite ``A``, through its Jacobi-equilibrated
    form (columns of very different scales, e.g. a year next to a ratio, keep their
    digits). A singular ``A`` is a DataError naming the coefficient most involved.
    """
    A = 0.5 * (A + A.T)
    d = np.sqrt(np.diag(A))
    if not np.all(np.isfinite(A)):
        raise DataError("the Fisher information at θ is not finite: no standard errors")
    zero = np.flatnonzero(~(d > 0))
    if zero.size:
        raise DataError(f"coefficient {names[zero[0]]!r} has zero Fisher information (a "
                        "column of zeros, or every row's weight zero): it is not identified")
    As = A / np.outer(d, d)
    vals, vecs = np.linalg.eigh(As)
    if not vals[0] > SINGULAR_RCOND * vals[-1]:
        v = np.abs(vecs[:, 0])  # the unidentified direction: the coefficients it moves
        moved = [names[j] for j in np.flatnonzero(v >= NULL_DIRECTION_SHARE * v.max())]
        what = f"coefficient {moved[0]!r} is" if len(moved) == 1 else \
            f"coefficients {', '.join(map(repr, moved))} are"
        raise DataError(f"the Fisher information at θ is singular (smallest/largest "
                        f"eigenvalue {vals[0] / vals[-1]:.1e}): {what} not identified by the "
                        "data (a constant or collinear column, e.g. a full one-hot encoding "
                        "beside the intercept; a fit with --l2 has a unique optimum)")
    inv = (vecs / vals) @ vecs.T
    return inv / np.outer(d, d)


def _check_options(alpha, cov: str, *, penalized: bool) -> tuple[float, str]:
    """``(alpha, cov_type)`` checked: alpha in (0, 1), cov "model" or "robust"."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if cov not in ("model", "robust"):
        raise ValueError(f"cov must be 'model' or 'robust', got {cov!r}")
    return alpha, ("HC0" if cov == "robust" else "nonrobust") + \
        ("-penalized" if penalized else "")


def _tests(coef, se, alpha, df):
    """``(z, p, low, high)``: normal (``df`` None) or Student's t with ``df`` degrees."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = coef / se
    dist = stats.norm if df is None else stats.t(df)
    p = 2.0 * dist.sf(np.abs(z))
    q = dist.ppf(1.0 - alpha / 2.0)
    return z, p, coef - q * se, coef + q * se


@dataclass
class Summary:
    """Coefficients with standard errors, tests and intervals, and the fit's likelihood
    measures (see the module's conventions). ``str(summary)`` is the text table,
    :meth:`to_dict` the JSON.
    """

    model: str
    names: list[str]
    coef: np.ndarray
    cov: np.ndarray
    cov_robust: np.ndarray
    alpha: float
    cov_type: str
    use_t: bool
    n_obs: float
    rows: int
    df_model: int
    df_resid: float
    log_likelihood: float
    deviance: float
    scale: float
    l2: float
    converged: bool | None
    decrement: float
    notes: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        """The number of parameters p."""
        return int(self.coef.shape[0])

    @property
    def aic(self) -> float:
        """−2 llf + 2p."""
        return -2.0 * self.log_likelihood + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """−2 llf + p·log(n_obs)."""
        return -2.0 * self.log_likelihood + self.n_params * math.log(self.n_obs)

    @property
    def bse(self) -> np.ndarray:
        """Model-based standard errors, shape (p,)."""
        return np.sqrt(np.maximum(np.diag(self.cov), 0.0))  # (round-off below 0)

    @property
    def bse_robust(self) -> np.ndarray:
        """HC0 (sandwich) standard errors, shape (p,)."""
        return np.sqrt(np.maximum(np.diag(self.cov_robust), 0.0))

    def columns(self, robust: bool) -> dict:
        """``se, z, p, ci_low, ci_high`` arrays of the model-based or robust covariance."""
        se = self.bse_robust if robust else self.bse
        df = self.df_resid if (self.use_t and not robust) else None
        z, p, lo, hi = _tests(self.coef, se, self.alpha, df)
        return {"se": se, "z": z, "p": p, "ci_low": lo, "ci_high": hi}

    @property
    def primary_robust(self) -> bool:
        """Whether the main columns are the robust ones (``cov_type`` HC0)."""
        return self.cov_type.startswith("HC0")

    def with_options(self, *, alpha: float = 0.05, cov: str = "model") -> Summary:
        """The same summary at level 1 − ``alpha`` with the ``cov`` main columns (no pass)."""
        alpha, cov_type = _check_options(alpha, cov, penalized=self.l2 > 0)
        return dataclasses.replace(self, alpha=alpha, cov_type=cov_type)

    def conf_int(self, robust: bool | None = None) -> np.ndarray:
        """Confidence intervals at level 1 − alpha, shape (p, 2) (as statsmodels')."""
        c = self.columns(self.primary_robust if robust is None else robust)
        return np.column_stack([c["ci_low"], c["ci_high"]])

    def to_dict(self) -> dict:
        """JSON-ready: ``coefficients`` (name, coef, se, z, p, ci_low, ci_high of
        ``cov_type``, and ``se_robust``, ``z_robust``, ``p_robust``, ``ci_low_robust``,
        ``ci_high_robust`` of HC0), then the fit's measures.
        """
        main = self.columns(self.primary_robust)
        rob = self.columns(True)
        coefficients = []
        for j, name in enumerate(self.names):
            row = {"name": name, "coef": float(self.coef[j])}
            row.update({k: float(v[j]) for k, v in main.items()})
            row.update({f"{k}_robust": float(v[j]) for k, v in rob.items()})
            coefficients.append(row)
        return {
            "model": self.model, "coefficients": coefficients,
            "log_likelihood": self.log_likelihood, "deviance": self.deviance,
            "aic": self.aic, "bic": self.bic, "n_obs": self.n_obs, "rows": self.rows,
            "df_model": self.df_model, "df_resid": self.df_resid,
            "converged": self.converged, "cov_type": self.cov_type, "alpha": self.alpha,
            "test": ("t" if self.use_t and not self.primary_robust else "z"),
            "scale": self.scale, "l2": self.l2, "decrement": self.decrement,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        from natgrad_stream.inference.report import text_table

        return text_table(self)


def summarize(model, theta: np.ndarray, sums, *, alpha: float = 0.05, cov: str = "model",
              l2: float = 0.0, converged: bool | None = None, names=None) -> Summary:
    """The :class:`Summary` of ``model`` at ``theta`` from the pass's
    :class:`~natgrad_stream.inference.sums.InferenceSums`.

    Parameters
    ----------
    alpha : float
        Intervals at level 1 − alpha, in (0, 1).
    cov : {"model", "robust"}
        The covariance of the main columns (``se``, ``z``, ``p``, ``ci_*``); the robust
        (HC0) columns are always given too.
    l2 : float
        The fit's L2 penalty λ (see the module's conventions).
    names : list of str, optional
        Coefficient names (default :func:`coefficient_names`).
    """
    check_inference_model(model)
    penalized = float(l2 or 0.0) > 0.0
    alpha, cov_type = _check_options(alpha, cov, penalized=penalized)
    theta = np.asarray(theta, dtype=np.float64)
    names = coefficient_names(model) if names is None else list(names)
    P = model.n_params
    n = float(sums.weight)
    A = sums.fisher.copy()
    grad = sums.grad.copy()
    if penalized:
        idx = np.asarray(model.penalized_indices, dtype=np.int64)
        A[idx, idx] += n * float(l2)
        grad[idx] += n * float(l2) * theta[idx]
    A_inv = _equilibrated_inverse(A, names)
    meat = 0.5 * (sums.meat + sums.meat.T)
    fisher = 0.5 * (sums.fisher + sums.fisher.T)
    n_intercepts = len(model.center_indices)
    df_resid = n - P
    notes = []
    if model.name == "linear":
        rss = 2.0 * sums.loss
        if not df_resid > 0:
            raise DataError(f"{n:g} observations for {P} parameters: OLS needs more "
                            "observations than parameters for its residual variance")
        if not rss > 0:
            raise DataError("the residuals are all zero (the targets are an exact linear "
                            "function of the features): OLS's residual variance is 0, so its "
                            "log-likelihood, standard errors and tests are undefined")
        scale = rss / df_resid
        llf = -0.5 * n * (math.log(2.0 * math.pi * rss / n) + 1.0)
        deviance = rss
        use_t = True
    else:
        scale = 1.0
        use_t = False
        if model.name == "poisson":
            llf = -sums.loss - sums.log_factorial
            deviance = 2.0 * (sums.loss + sums.ylogy)
        else:  # logistic and softmax: the loss is −log q of the observed class
            llf = -sums.loss
            deviance = 2.0 * sums.loss
    cov_model = scale * (A_inv @ fisher @ A_inv if penalized else A_inv)
    cov_robust = A_inv @ meat @ A_inv
    cov_model = 0.5 * (cov_model + cov_model.T)
    cov_robust = 0.5 * (cov_robust + cov_robust.T)
    decrement = 0.5 * float(grad @ A_inv @ grad)
    if decrement > OFF_OPTIMUM_DECREMENT * max(1.0, abs(llf)):
        notes.append(f"θ is not the optimum of these data (Newton decrement {decrement:.3g}):"
                     " the standard errors and tests assume it is")
    if penalized:
        notes.append(f"penalized fit (l2={l2:g}): sandwich covariances of the shrunk "
                     "estimator; AIC and BIC count every parameter")
    return Summary(model=model.name, names=names, coef=theta.copy(), cov=cov_model,
                   cov_robust=cov_robust, alpha=alpha, cov_type=cov_type, use_t=use_t,
                   n_obs=n, rows=int(sums.rows), df_model=P - n_intercepts,
                   df_resid=df_resid, log_likelihood=float(llf), deviance=float(deviance),
                   scale=float(scale), l2=float(l2 or 0.0), converged=converged,
                   decrement=decrement, notes=notes)
