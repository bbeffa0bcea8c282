"""A fully visible Boltzmann machine (Ising model) learned by minimum probability flow.

The model is the unnormalized energy model of the paper's section 2.4 (eq. 32),
``q(x) = exp(−E(x; θ)) / Z(θ)`` over binary vectors ``x ∈ {0, 1}^d``, with

``E(x) = −Σ_{p<q} J_pq x_p x_q − Σ_p h_p x_p``.

``Z`` is a sum over ``2^d`` states, so the model is fitted by *minimum probability flow*
[Sohl-Dickstein, Battaglino and DeWeese, 2011] with single-bit-flip connectivity, which
needs no ``Z``. The default metric is the energy metric of eq. 33 (the Fisher information
with the ``log Z`` terms dropped); see :class:`IsingMPF` for the centring of ``∂E/∂θ``.

Conventions
-----------
Parameters: ``θ = [J_01, J_02, …, J_0(d−1), J_12, …, J_(d−2)(d−1), h_0, …, h_(d−1)]``, the
strict upper triangle of ``J`` row-major (``d(d−1)/2`` entries), then the fields ``h``;
``P = d(d+1)/2``. Groups for the block structure: ``J`` and ``h``.

Spins: the 0/1 convention above. A ±1 model ``E = −Σ_{p<q} K_pq s_p s_q − Σ_p b_p s_p``
with ``s = 2x − 1`` is the same distribution with ``J = 4K`` and
``h_p = 2 b_p − 2 Σ_{q≠p} K_pq`` (the energies differ by a constant).

Objective: MPF with the bit-flip neighbours of each data row,
``K(θ) = ε ⟨Σ_j exp(½ (E(x) − E(x^(j))))⟩_data``, ``x^(j)`` being ``x`` with bit ``j``
flipped. This is the paper's ``K = (ε/|D|) Σ_{x∈D} Σ_{x'∉D} g_{x'x} exp(½ (E(x) − E(x')))``
with the sum taken over *all* bit-flip neighbours ``x'`` rather than only those outside the
data set, which makes the loss a per-row quantity that can be streamed; the estimator stays
consistent (at the true θ the expected gradient is exactly zero, by the ``x ↔ x'``
symmetry of ``p(x) exp(½ (E(x) − E(x')))``). ``K`` is convex in θ (a sum of exponentials
of linear functions of θ).

The flow time ``ε`` only scales ``K`` (the minimizer does not depend on it). We take
``ε = FLOW_TIME = 1/4`` (so ``K(0) = d/4``): the energy metric is not the curvature of
``K``, and with ``ε = 1`` the eigenvalues of ``G⁻¹∇²K`` reach 5–7 (measured at θ = 0 for
d = 8 … 40), so the learner's default first step (lr = 1) overshoots and diverges; with
``ε = 1/4`` they stay below 2. Measured with the default learner on data from
:mod:`natgrad_stream.data.synthetic.ising` (30,000 rows, 4 seeds): ``ε = 1/2`` diverged on
2 of 4 models with d = 16; ``ε = 1/4`` learned every model with d ≤ 24 (coupling
correlation ≥ 0.985 after one pass).
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import num_threads
from natgrad_stream.models import _ising_kernels as K
from natgrad_stream.models.base import as_float64_vector
from natgrad_stream.models.factor import FactorModel, RowTerms

#: MPF's flow time ε: the loss is ``ε Σ_j exp(½ (E(x) − E(x^(j))))`` (module docstring).
FLOW_TIME = 0.25
_DUMMY_FACTORS = np.zeros((1, 1, 1))


def n_couplings(d: int) -> int:
    """Number ``d(d−1)/2`` of couplings ``J_pq``, ``p < q``, of ``d`` units."""
    return d * (d - 1) // 2


def pack_params(J, h) -> np.ndarray:
    """θ from a symmetric coupling matrix and fields.

    Parameters
    ----------
    J : array_like, shape (d, d)
        Symmetric couplings; the diagonal is ignored (``x_p² = x_p`` belongs to ``h``).
    h : array_like, shape (d,)

    Returns
    -------
    ndarray, shape (d(d+1)/2,), float64
    """
    J = np.asarray(J, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 1 or J.shape != (h.shape[0], h.shape[0]):
        raise ValueError(f"J must have shape (d, d) and h shape (d,); got {J.shape}, {h.shape}")
    if not np.allclose(J, J.T):
        raise ValueError("J must be symmetric")
    iu = np.triu_indices(h.shape[0], k=1)
    return np.concatenate([J[iu], h])


def unpack_params(theta, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(J, h)`` from θ: ``J`` (d, d) symmetric with zero diagonal, ``h`` (d,)."""
    theta = as_float64_vector(theta, "theta", n_couplings(d) + d)
    m = n_couplings(d)
    J = np.zeros((d, d))
    iu = np.triu_indices(d, k=1)
    J[iu] = theta[:m]
    J += J.T
    return J, theta[m:].copy()


def check_binary_features(name: str, block: np.ndarray):
    """Data check for ``X`` blocks: every value must be 0 or 1.

    Same signature as the stream's checks, ``(name, block) -> (row, message, column) |
    None``, for 2-D blocks.
    """
    if block.size == 0:
        return None
    X = np.ascontiguousarray(block)
    k = int(K.first_nonbinary(X.reshape(X.shape[0], -1)))
    if k < 0:
        return None
    row, col = divmod(k, X.shape[1])
    value = X[row, col].item()
    return row, f"value {value!r} is not binary; the Ising model needs 0/1 features", col


def center_factors(U: np.ndarray, w: np.ndarray | None = None) -> None:
    """Centre per-row factors at their (weighted) batch mean, in place, unbiased.

    ``U`` (n, P) becomes ``c (U − Ū_w)`` with ``Ū_w`` the ``w``-weighted mean and
    ``c² = W² / (W² − Σw²)`` (``W = Σw``; ``n/(n−1)`` for unit weights), so
    ``Σ_i w_i u_i u_iᵀ = W S`` with ``S`` the unbiased weighted covariance (numpy's
    ``cov(..., aweights=w)``); a batch of one row gives zero.
    """
    if w is None:
        w = np.ones(U.shape[0])
    W, W2 = float(w.sum()), float(w @ w)
    if not W > 0:
        return
    U -= (w @ U) / W
    if W * W > W2:
        U *= np.sqrt(W * W / (W * W - W2))


class IsingMPF(FactorModel):
    """Fully visible Boltzmann machine on 0/1 vectors, fitted by minimum probability flow.

    Parameters
    ----------
    n_features : int
        Number of units ``d`` (>= 2).
    center_energy : bool
        Centre ``∂E/∂θ`` at the batch mean in the ``energy`` metric (default; see Notes).
        False gives eq. 33 literally.
    flow_time : float
        MPF's ``ε`` (scale of the loss, not of its minimizer); see the module docstring.

    Notes
    -----
    See the module docstring for the energy, the layout of θ and the MPF objective.
    Per row, with local fields ``a_j = h_j + Σ_{p≠j} J_pj x_p``, ``δ_j = 1 − 2x_j`` and
    ``e_j = ε exp(½ δ_j a_j)``: loss ``Σ_j e_j``, ``∂l/∂h_j = ½ δ_j e_j``,
    ``∂l/∂J_pq = ½ (δ_q e_q x_p + δ_p e_p x_q)``.

    Metrics:

    ``energy`` (default, eq. 33)
        ``⟨∂E/∂θ ∂E/∂θᵀ⟩`` over the data with ``∂E/∂θ = −[x_p x_q (p<q), x_p]``, which
        does not depend on θ. ``E`` is only defined up to an additive constant ``c(θ)``
        (``Z`` absorbs it), and eq. 33 depends on that choice. With ``center_energy``
        (default) the constant is fixed by measuring energies from their batch mean, i.e.
        the factors are ``∂E/∂θ − ⟨∂E/∂θ⟩_batch`` and the metric is the covariance of the
        sufficient statistics. That is eq. 31 (the Fisher over the data, ``log Z``
        included) with the model mean ``⟨∂E/∂θ⟩_q`` replaced by the data mean, exact at the
        moment-matching point, and it is invariant to the spin convention. It matters:
        on data with biased units the literal uncentred eq. 33 conditions the problem
        worse than no metric at all. Measured (``tests/test_ising.py``, d = 8, 5,000
        rows, unit means 0.04–0.95, full-batch steps to 1e-3 of the initial MPF gap, each
        at its best step size): steepest descent 625, literal eq. 33 2,886, centred 16;
        on balanced units (d = 8, 20,000 rows) 54, 155 and 14. With sample weights the
        centring uses the weighted batch mean (the unbiased weighted covariance).
    ``loss-gradient`` (eq. 39)
        ``⟨∇l ∇lᵀ⟩`` of the MPF loss.
    ``empirical``
        Treated as ``loss-gradient``: the MPF loss is not a log-likelihood, so there is no
        score over the data to take instead.

    The model Fisher (eq. 30) needs ``Z`` and is not offered. Rows must be binary; a
    non-binary value raises ``ValueError`` naming the row and column.

    Batches need well over ``P`` rows: the learner whitens with the metric of its first
    batches, and a noisy estimate of its small eigenvalues gives steps far too long.
    Measured with the default learner (batches of 1,024 rows): fine up to d = 24
    (P = 300); at d = 40 (P = 820) it diverges within 3 steps, while batches of 4,096
    rows, or ``damping=0.1``, learn it (coupling correlation 0.986 and 0.969 after two
    passes of 30,000 rows).

    Examples
    --------
    >>> import numpy as np
    >>> from natgrad_stream.models import make_model
    >>> X = (np.random.default_rng(0).random((100, 4)) < 0.5).astype(np.float32)
    >>> model = make_model("ising", 4)
    >>> model.n_params, float(model.loss(X, None, model.init_params()))
    (10, 1.0)
    """

    name = "ising"
    requires_targets = False
    metrics = ("energy", "loss-gradient", "empirical")
    default_metric = "energy"
    #: Above this many parameters the model recommends damping :data:`LARGE_DAMPING`.
    LARGE_PARAMS = 300
    LARGE_DAMPING = 0.1

    @property
    def learner_defaults(self) -> dict:
        """Passes after the first by L-BFGS (``refine="lbfgs"``: the MPF objective has no
        Fisher-scoring step); damping 0.1 beyond :attr:`LARGE_PARAMS` parameters (d > 24).

        The first whitening uses one batch's metric; with as many parameters as rows it is
        too noisy for the first natural step. Measured, one default pass over 65,536 exact
        samples: d = 40 (820 parameters) diverges at damping 1e-9 and 1e-2 and reaches a
        coupling correlation of 0.973 at 0.1; at d = 10 and 24, damping 0.1 would cost a
        little (0.998 → 0.992, 0.993 → 0.982), so it is not the default there.
        """
        out = {"refine": "lbfgs"}  # the MPF objective: no Fisher scoring
        if self.n_params > self.LARGE_PARAMS:
            out["damping"] = self.LARGE_DAMPING
        return out

    def __init__(self, n_features: int, *, center_energy: bool = True,
                 flow_time: float = FLOW_TIME):
        super().__init__(n_features)
        if self.n_features < 2:
            raise ValueError(f"the Ising model needs at least 2 features (units), got "
                             f"{self.n_features}")
        if not isinstance(center_energy, bool | np.bool_):
            raise TypeError(f"center_energy must be a bool, got {type(center_energy).__name__}")
        if not (np.isfinite(flow_time) and flow_time > 0):
            raise ValueError(f"flow_time must be a finite number > 0, got {flow_time!r}")
        self.center_energy = bool(center_energy)
        self.flow_time = float(flow_time)

    def config(self):
        return {**super().config(), "center_energy": self.center_energy,
                "flow_time": self.flow_time}

    @property
    def n_params(self) -> int:
        return n_couplings(self.n_features) + self.n_features

    @property
    def penalized_indices(self) -> tuple[int, ...]:
        """The couplings ``J`` (the fields ``h`` play the intercepts' part)."""
        return tuple(range(n_couplings(self.n_features)))

    def param_groups(self):
        """Couplings ``J`` (upper triangle) and fields ``h``."""
        m = n_couplings(self.n_features)
        return [("J", 0, m), ("h", m, self.n_params)]

    def params_to_dict(self, theta):
        """``{"J": d×d symmetric list with zero diagonal, "h": list}``."""
        J, h = unpack_params(theta, self.n_features)
        return {"J": J.tolist(), "h": h.tolist()}

    def initial_params(self, X, y, w):
        """Independent units fitted to the first batch: ``J = 0``, ``h_j = logit(x̄_j)``.

        This is the exact minimizer of the MPF objective (and the maximum-likelihood fit)
        among models without couplings; means are clipped to ``[c, 1 − c]`` with
        ``c = 1/(2(n + 1))`` so units constant in the batch get finite fields.
        """
        X = self.check_X(X)
        n = X.shape[0]
        wt = np.ones(n) if w is None else as_float64_vector(w, "w", n)
        if n == 0 or not wt.sum() > 0:
            return None
        c = 0.5 / (n + 1.0)
        p = np.clip((wt @ X.astype(np.float64)) / wt.sum(), c, 1.0 - c)
        theta = self.init_params()
        theta[n_couplings(self.n_features):] = np.log(p / (1.0 - p))
        return theta

    # -- input --------------------------------------------------------------------------
    def check_X(self, X):
        """Validate shape and dtype (base class) and that every value is 0 or 1."""
        X = super().check_X(X)
        k = int(K.first_nonbinary(X))
        if k >= 0:
            row, col = divmod(k, X.shape[1])
            raise ValueError(f"ising: X row {row}, column {col} has value {X[row, col].item()!r}; "
                             "features must be binary (0 or 1)")
        return X

    def feature_check(self):
        """A data check for feature blocks (0/1 values), see :func:`check_binary_features`."""
        return check_binary_features

    # -- per-row terms ------------------------------------------------------------------
    def row_terms(self, X, y, theta, *, metric, rng=None, mc_samples=1, w=None,
                  parallel: bool | None = None) -> RowTerms:
        """Per-row MPF loss (n,), its gradient (n, P) and the factors of ``metric``.

        ``X`` must already be validated (:meth:`check_X`); ``y`` is ignored. ``parallel``
        forces the serial or parallel kernel (None: by batch size).
        """
        if metric is not None and metric not in self.metrics:
            raise ValueError(f"model {self.name!r} does not support metric {metric!r}; "
                             f"it supports {', '.join(self.metrics)}")
        n, P = X.shape[0], self.n_params
        theta = as_float64_vector(theta, "theta", P)
        loss = np.empty(n)
        grad = np.empty((n, P))
        energy = metric == "energy"
        factors = np.empty((n, 1, P)) if energy else _DUMMY_FACTORS
        kernel = K.ising_row_terms_parallel if self.use_parallel(n, parallel) else \
            K.ising_row_terms
        kernel(X, theta, self.flow_time, energy, loss, grad, factors)
        if metric is None:
            return RowTerms(loss, grad)
        if energy:
            if self.center_energy:
                center_factors(factors[:, 0, :], w)
            return RowTerms(loss, grad, factors=factors)
        return RowTerms(loss, grad, factors=grad[:, None, :])

    def scores(self, X, y, theta):
        """``−∂l/∂θ`` per row, shape (n, P): the negative MPF-loss gradient.

        The log-likelihood score needs ``∂ log Z/∂θ``, which is intractable; this is what
        plays its role in the ``loss-gradient`` metric.
        """
        return super().scores(X, None, theta)

    def model_fisher(self, X, theta, w=None):
        """Not available: the model Fisher of an Ising model needs ``Z`` (use ``energy``)."""
        raise ValueError("model 'ising' has no closed-form model Fisher (it needs the "
                         "partition function); use metric 'energy' (eq. 33)")

    # -- evaluation ---------------------------------------------------------------------
    def evaluation_sums(self, X, y, theta, *, parallel: bool | None = None):
        """``{"n", "mpf", "pll"}``: row count, sums of the MPF loss and of
        ``Σ_j log p(x_j | x_−j)`` (``y`` is ignored).
        """
        X = self.check_X(X)
        theta = as_float64_vector(theta, "theta", self.n_params)
        d = self.n_features
        if self.use_parallel(X.shape[0], parallel):
            mpf, pll = K.ising_evaluate_parallel(X, theta, self.flow_time,
                                                 np.empty((num_threads(), d)))
        else:
            mpf, pll = K.ising_evaluate(X, theta, self.flow_time, np.empty(d))
        return {"n": float(X.shape[0]), "mpf": mpf, "pll": pll}

    def evaluation_metrics(self, sums):
        """``{"n", "mpf", "pseudo_log_likelihood"}``: means over rows (pll in nats)."""
        n = sums["n"]
        return {"n": int(n), "mpf": sums["mpf"] / n, "pseudo_log_likelihood": sums["pll"] / n}
