"""Nonlinear least squares with a one-hidden-layer network (paper section 2.8, item 2).

``f(x; θ) = w2 · tanh(W1 x + b1) + b2`` with one output, fitted by the loss
``½ (y − f(x; θ))²`` per row. The model is not probabilistic, but the L2 penalty reads as
a conditional Gaussian ``q(y | x; θ) = N(f(x; θ), 1)`` whose Fisher information over the
observed inputs (eq. 40–41) is the *Gauss–Newton* metric::

    G(θ) = ⟨J_f(x)ᵀ J_f(x)⟩_p(x),      J_f = ∂f(x; θ)/∂θ

The paper's ``q ∝ exp(−‖y − f‖²)`` has variance ½, which only multiplies ``G`` by a
constant that the step size absorbs; with unit variance ``G`` is exactly the Gauss–Newton
part of the Hessian of ``½ (y − f)²``, so a unit natural-gradient step is the Gauss–Newton
step.
"""

from __future__ import annotations

import math

import numpy as np

from natgrad_stream._constants import AUTO_MAX_EPOCHS, RNG_MLP_INIT
from natgrad_stream._jit import num_threads
from natgrad_stream.models import _mlp_kernels as K
from natgrad_stream.models.base import as_float64_vector, check_monte_carlo
from natgrad_stream.models.factor import FactorModel, RowTerms

#: Hidden units when none are given.
DEFAULT_HIDDEN = 16
#: Initial first-layer weights are N(0, (INIT_W1_SCALE / √d)²); the biases start at zero.
INIT_W1_SCALE = 1.0
#: Initial output weights are N(0, (INIT_W2_SCALE / √H)²).
INIT_W2_SCALE = 1.0
#: Learner options measured to work for this non-convex model (``tests/test_mlp.py``),
#: to be used with ``rewhiten=batch_size`` (a fresh whitener every batch): a constant step
#: on a Marquardt-damped (``G + ε diag G``) metric, i.e. stochastic Levenberg–Marquardt.
RECOMMENDED_LEARNER_OPTIONS = {"step_schedule": "constant", "lr": 0.1, "damping": 1e-2,
                               "fisher_every": 1, "rewhiten": "every:1", "refine": "lbfgs"}
#: Row evaluations a fit left without ``epochs`` may spend (:meth:`MLPRegressor.auto_pass_cap`):
#: small data get up to MLP_MAX_AUTO_EPOCHS passes (L-BFGS iterations, as scikit-learn's
#: ``MLPRegressor(solver="lbfgs", max_iter=...)`` counts them), large data the learner's cap.
MLP_AUTO_ROW_BUDGET = 25_000_000
#: Upper bound of that cap, in passes (the slowest of 20 diabetes fits, seeds 0–9
#: standardized and raw, converged at 9,364).
MLP_MAX_AUTO_EPOCHS = 10_000
#: Row evaluations the restarts of a default fit may spend together
#: (:meth:`MLPRegressor.auto_restarts`: whole fits from seeds ``seed, seed + 1, …`` at
#: their pass cap each): 10 up to 1,000 rows (scikit-learn's diabetes: 442), 4 from 2,500
#: to 500,000 rows (a fit's cap is 25M evaluations there), 2 at 1M rows, 1 from 2M rows
#: (a fit's cap is 50 passes there). On standardized
#: diabetes 16 single fits (seeds 0–15) ended at MSE 0.065–0.097, median 0.075; 2 of 16
#: reached scikit-learn's best of 5 restarts (0.0699), whose own 5 spread 0.070–0.085:
#: the local optimum a start leads to, not the optimizer, sets the spread.
MLP_RESTART_ROW_BUDGET = 100_000_000
#: Upper bound of those restarts.
MLP_MAX_AUTO_RESTARTS = 10
#: Raced restarts (:meth:`MLPRegressor.restart_screen`), where a fit's pass cap allows
#: more than twice a screen: every start runs MLP_SCREEN_ROUNDS complete L-BFGS rounds
#: (about 1,050 passes), then only the MLP_SCREEN_KEPT lowest continue to their end. On
#: standardized diabetes (60 starts, seeds 0–59) the loss after 2 rounds ranks the final
#: losses with Spearman 0.86 (after 1 round 0.61), and the 6 starts lowest there were the
#: 6 lowest at the end, the 6 of 60 below scikit-learn's best of 5 restarts, whose own 40
#: fits (random_state 0–39) put 1 there. Resampling those 60: 30 starts
#: raced to 2 kept reach it with probability 0.99 (binomially, 1 − 0.9³⁰ ≈ 0.96) in about
#: 37,000 passes, where 10 whole fits (about 41,600 passes) do with 0.68.
MLP_SCREEN_ROUNDS = 2
MLP_SCREEN_KEPT = 2
#: Starts of a raced default fit: as many screens (MLP_SCREEN_ROUNDS × MLP_ROUND_ITERS
#: passes each) as MLP_SCREEN_ROW_BUDGET row evaluations allow, at most MLP_MAX_SCREENED
#: (442 rows: 30; 5,000 rows: 8; from 20,000 rows the whole fits above).
MLP_SCREEN_ROW_BUDGET = 40_000_000
MLP_MAX_SCREENED = 30
#: L-BFGS iterations per hand-over round (one re-whitening each): a non-convex fit loses
#: its curvature memory at each round, and rounds of 25 ended 0.12-0.14 (standardized
#: diabetes, 2,000 passes) against 0.08-0.11 with rounds of 500.
MLP_ROUND_ITERS = 500
#: Stopping rule of those rounds: a round of MLP_ROUND_ITERS iterations that improves the
#: loss by at most this fraction of the loss at the first round's start ends the fit at a
#: local minimum (``round_tol_from_start``: the same rule in any units of y). Before, the
#: fraction was of the current loss, floored at 1: 1e-5 absolute on standardized diabetes
#: (loss ~0.035) but 1e-5 relative on raw diabetes (loss ~200, i.e. 0.002 absolute, 30
#: times stricter in the same units), so no raw fit of seeds 0–9 converged within 10,000
#: passes while 8 standardized ones did. With 1e-4 of the first round's start (0.28–0.98
#: standardized) all 20 converged, in 1,589–9,364 passes, at MSE/Var(y) 0.066–0.091
#: (standardized) and 0.063–0.097 (raw); 1e-12, the convex models' rule, never held.
MLP_ROUND_TOL = 1e-4
#: Metric kinds whose per-row factor is the Jacobian ``∂f/∂θ``.
_JACOBIAN_METRICS = ("gauss-newton", "model")
_DUMMY_U = np.zeros((1, 1, 1))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class MLPRegressor(FactorModel):
    """One-hidden-layer tanh network for scalar regression, fitted by least squares.

    Parameters
    ----------
    n_features : int
        Input dimension ``d``.
    hidden : int
        Hidden units ``H``.
    seed : int
        Seeds the random initial weights (:meth:`init_params`).

    Notes
    -----
    Layout: ``θ = [W1 (H × d, row-major), b1 (H), w2 (H), b2]``, ``P = H d + 2H + 1``;
    parameter groups ``layer1 = (W1, b1)`` and ``layer2 = (w2, b2)`` (the block structure
    is block-diagonal by layer).

    Loss per row: ``½ (y − f)²``. Metrics:

    ``gauss-newton`` (default)
        ``⟨J_fᵀ J_f⟩``, factor ``J_f = ∂f/∂θ`` per row (eq. 40–41). At a zero-residual
        point it equals the Hessian of the loss.
    ``model``
        The same matrix: the Fisher information of the unit-variance conditional Gaussian
        ``N(f, 1)``, ``E_y[(y − f)² J Jᵀ] = J Jᵀ``.
    ``empirical`` / ``loss-gradient``
        ``⟨(y − f)² J Jᵀ⟩`` (eq. 31/39; equal here because the loss is ``−log q`` up to a
        constant).
    ``monte-carlo``
        The model Fisher estimated with targets ``y ~ N(f, 1)``: factors ``ε J / √K``.

    Initialization (:meth:`init_params`) draws ``W1`` with standard deviation
    ``INIT_W1_SCALE / √d`` and ``w2`` with ``INIT_W2_SCALE / √H`` from ``seed`` (symmetry
    breaking; ``w2 ≠ 0`` so the first layer has a non-zero Jacobian), biases zero. The
    scale assumes inputs of order one; the model never sees the data, so on raw, badly
    scaled features (scales spanning decades, offsets far from zero) most units start
    saturated (on the ``mlp`` synthetic task, 60–89 % of rows have ``|W1 x + b1| > 3``
    per unit). The Gauss–Newton natural gradient is invariant to affine maps of the inputs
    (a linear reparameterization of ``(W1, b1)``), so the scaling itself does not slow it,
    and on that task it recovers from the saturated start (training MSE 0.011–0.019 after
    4 passes, against 0.010–0.014 on standardized inputs); the initial point itself is not
    invariant, so standardizing inputs remains the safer choice.

    Learning: the loss is non-convex and ``G(θ)`` changes quickly as θ moves (the
    first-layer block scales with ``w2²``). The learner's defaults diverge here: the first
    harmonic step (``η = 1``) is an undamped Gauss–Newton step from one batch, and a
    whitener kept for several batches goes stale. What works (measured in
    ``tests/test_mlp.py``) is :data:`RECOMMENDED_LEARNER_OPTIONS`, which the learner applies
    as this model's :attr:`learner_defaults` wherever the user leaves an option unset: a
    constant step ``lr = 0.1`` on the metric damped as ``G + 0.01 diag(G)``, re-whitened
    every batch (``every:1`` sample, checked once per batch), the metric accumulated on
    every batch — in effect stochastic Levenberg–Marquardt.

    Examples
    --------
    >>> m = MLPRegressor(3, hidden=4)
    >>> m.n_params  # 4·3 + 4 + 4 + 1
    21
    >>> [g[0] for g in m.param_groups()]
    ['layer1', 'layer2']
    """

    name = "mlp"
    metrics = ("gauss-newton", "model", "loss-gradient", "empirical", "monte-carlo", "kfac")
    default_metric = "gauss-newton"
    learner_defaults = RECOMMENDED_LEARNER_OPTIONS
    round_metric = "kfac"
    round_tol_from_start = True
    handover_defaults = {"lbfgs_iters": MLP_ROUND_ITERS, "lbfgs_tol": MLP_ROUND_TOL}

    def auto_pass_cap(self, n_rows: int) -> int:
        """Passes of a fit left without ``epochs``: :data:`MLP_AUTO_ROW_BUDGET` row
        evaluations, at least the learner's cap and at most :data:`MLP_MAX_AUTO_EPOCHS`.
        """
        return int(min(MLP_MAX_AUTO_EPOCHS,
                       max(AUTO_MAX_EPOCHS, MLP_AUTO_ROW_BUDGET // max(int(n_rows), 1))))

    def auto_restarts(self, n_rows: int) -> int:
        """Starts of a default fit: raced (:meth:`restart_screen`), as many screens as
        :data:`MLP_SCREEN_ROW_BUDGET` row evaluations allow, at most
        :data:`MLP_MAX_SCREENED` (and no fewer than the whole fits below); else as many
        whole fits (each at most
        :meth:`auto_pass_cap` passes) as :data:`MLP_RESTART_ROW_BUDGET` allows, 1 to
        :data:`MLP_MAX_AUTO_RESTARTS`.
        """
        n = max(int(n_rows), 1)
        per_fit = n * self.auto_pass_cap(n)
        whole = int(min(MLP_MAX_AUTO_RESTARTS, max(1, MLP_RESTART_ROW_BUDGET // per_fit)))
        if self.restart_screen(n) is None:
            return whole
        per_screen = n * MLP_SCREEN_ROUNDS * MLP_ROUND_ITERS
        return max(whole, int(min(MLP_MAX_SCREENED, MLP_SCREEN_ROW_BUDGET // per_screen)))

    def restart_screen(self, n_rows: int) -> tuple[int, int] | None:
        """``(MLP_SCREEN_ROUNDS, MLP_SCREEN_KEPT)`` where :meth:`auto_pass_cap` exceeds
        twice a screen's passes (small data), else None (whole fits).
        """
        n = max(int(n_rows), 1)
        screen_passes = 1 + MLP_SCREEN_ROUNDS * MLP_ROUND_ITERS
        if self.auto_pass_cap(n) < 2 * screen_passes:
            return None
        return MLP_SCREEN_ROUNDS, MLP_SCREEN_KEPT

    def restart_model(self, k: int) -> MLPRegressor:
        """The same network with the initial-weight seed ``seed + k`` (``k >= 0``)."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        return self if k == 0 else type(self)(self.n_features, hidden=self.hidden,
                                              seed=self.seed + k)

    def __init__(self, n_features: int, *, hidden: int = DEFAULT_HIDDEN, seed: int = 0):
        super().__init__(n_features)
        self.hidden = _positive_int(hidden, "hidden")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
        self.seed = int(seed)

    @classmethod
    def options_from_data(cls, group, source, options):
        """``hidden`` from the command line (``--hidden``) when given."""
        hidden = options.get("hidden")
        return {} if hidden is None else {"hidden": int(hidden)}

    def config(self):
        return {**super().config(), "hidden": self.hidden, "seed": self.seed}

    # -- parameter layout ---------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.hidden * (self.n_features + 2) + 1

    @property
    def intercept_index(self) -> int:
        """``b2``: its Jacobian entry is 1 on every row."""
        return self.n_params - 1

    @property
    def center_indices(self) -> tuple[int, ...]:
        """``b1`` (each an exact intercept of its row of ``W1``) and ``b2`` (of ``w2``).

        ``∂f/∂W1[j, k] = (∂f/∂b1_j) x_k`` and ``∂f/∂b2 = 1``, so eliminating these first
        (see :func:`natgrad_stream.geometry.whitening.whiten`) gives the metric of centred inputs
        and hidden activations, free of the collinearity that feature offsets cause.
        """
        H, d = self.hidden, self.n_features
        return tuple(range(H * d, H * d + H)) + (self.n_params - 1,)

    def param_groups(self):
        """``layer1`` = (W1, b1) and ``layer2`` = (w2, b2)."""
        split = self.hidden * (self.n_features + 1)
        return [("layer1", 0, split), ("layer2", split, self.n_params)]

    def unpack(self, theta) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Split θ into ``W1`` (H, d), ``b1`` (H,), ``w2`` (H,) and ``b2`` (views/copies)."""
        theta = as_float64_vector(theta, "theta", self.n_params)
        H, d = self.hidden, self.n_features
        W1 = theta[:H * d].reshape(H, d)
        b1 = theta[H * d:H * d + H]
        w2 = theta[H * d + H:H * d + 2 * H]
        return W1, b1, w2, float(theta[-1])

    def pack(self, W1, b1, w2, b2) -> np.ndarray:
        """Inverse of :meth:`unpack`: the flat θ, shape (P,)."""
        H, d = self.hidden, self.n_features
        parts = [(np.asarray(W1, dtype=np.float64), (H, d), "W1"),
                 (np.asarray(b1, dtype=np.float64), (H,), "b1"),
                 (np.asarray(w2, dtype=np.float64).reshape(-1), (H,), "w2"),
                 (np.asarray(b2, dtype=np.float64).reshape(-1), (1,), "b2")]
        for a, shape, name in parts:
            if a.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        return np.concatenate([a.reshape(-1) for a, _, _ in parts])

    def init_params(self) -> np.ndarray:
        """Small random weights from ``seed``; zero biases (see the class notes)."""
        rng = np.random.default_rng([self.seed, RNG_MLP_INIT])
        H, d = self.hidden, self.n_features
        W1 = rng.standard_normal((H, d)) * (INIT_W1_SCALE / math.sqrt(d))
        w2 = rng.standard_normal(H) * (INIT_W2_SCALE / math.sqrt(H))
        return self.pack(W1, np.zeros(H), w2, 0.0)

    def initial_params(self, X, y, w) -> np.ndarray:
        """:meth:`init_params` for standardized data, mapped to the data's own units.

        With the first batch's (weighted) feature means ``μ`` and deviations ``σ`` and the
        target's ``μ_y``, ``σ_y``: ``W1/σ`` (column-wise), ``b1 − (W1/σ)μ``, ``σ_y w2`` and
        ``σ_y b2 + μ_y``. The network starts as the same function of standardized inputs
        whatever the units, so no unit starts saturated on raw features (a constant
        feature keeps ``σ = 1``).
        """
        X = np.asarray(self.dense_batch(X), dtype=np.float64)
        wt = np.ones(X.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
        if not wt.sum() > 0:
            return None
        p = wt / wt.sum()
        mu = p @ X
        sd = np.sqrt(np.maximum(p @ (X - mu) ** 2, 0.0))
        sd = np.where(sd > 0, sd, 1.0)
        mu_y = float(p @ y)
        sd_y = float(np.sqrt(max(float(p @ (y - mu_y) ** 2), 0.0))) or 1.0
        W1, b1, w2, b2 = self.unpack(self.init_params())
        W1 = W1 / sd
        return self.pack(W1, b1 - W1 @ mu, sd_y * w2, sd_y * b2 + mu_y)

    def params_to_dict(self, theta):
        W1, b1, w2, b2 = self.unpack(theta)
        return {"W1": W1.tolist(), "b1": b1.tolist(), "W2": [w2.tolist()], "b2": [b2]}

    # -- per-row terms --------------------------------------------------------------------
    def _rows(self, X, y, theta, with_jac: bool, parallel: bool | None = None):
        """Kernel call: per-row loss (n,), gradient (n, P), Jacobian (n, 1, P), output (n,)."""
        n, P = X.shape[0], self.n_params
        loss, grad, f = np.empty(n), np.empty((n, P)), np.empty(n)
        U = np.empty((n, 1, P)) if with_jac else _DUMMY_U
        if self.use_parallel(n, parallel):
            K.mlp_rows_parallel(X, y, theta, self.hidden, with_jac, loss, grad, U, f,
                                num_threads())
        else:
            K.mlp_rows(X, y, theta, self.hidden, with_jac, loss, grad, U, f)
        return loss, grad, (U if with_jac else None), f

    def row_terms(self, X, y, theta, *, metric, rng=None, mc_samples=1, w=None, parallel=None):
        """Per-row loss, gradient and the factors of ``metric`` (see the class notes)."""
        if metric is not None and metric not in self.metrics:
            raise ValueError(f"model {self.name!r} does not support metric {metric!r}; "
                             f"it supports {', '.join(self.metrics)}")
        with_jac = metric in _JACOBIAN_METRICS or metric == "monte-carlo"
        if metric == "monte-carlo":
            check_monte_carlo(rng, mc_samples)
        loss, grad, J, _ = self._rows(X, y, theta, with_jac, parallel)
        if metric == "kfac":
            return RowTerms(loss=loss, grad=grad,
                            constant_metric=self.kfac_metric(X, theta, w))
        if metric is None:
            factors = None
        elif metric in _JACOBIAN_METRICS:
            factors = J
        elif metric == "monte-carlo":
            # score of a target y ~ N(f, 1) is (y − f) J = ε J; the draws are those of
            # sample_targets (f + ε), so this equals the generic monte_carlo_factors
            k = int(mc_samples)
            eps = rng.standard_normal((k, X.shape[0]))
            factors = eps.T[:, :, None] * J / math.sqrt(k)
        else:  # empirical, loss-gradient
            factors = grad[:, None, :]
        return RowTerms(loss=loss, grad=grad, factors=factors)

    def kfac_metric(self, X, theta, w=None) -> np.ndarray:
        """The ``kfac`` metric of a batch, shape (P, P): block-diagonal by layer.

        Output layer: ``⟨h̃ h̃ᵀ⟩`` with ``h̃ = [tanh(W1 x + b1), 1]``, its exact Gauss–Newton
        block. Hidden layer: ``I_H ⊗ ⟨c x̃ x̃ᵀ⟩`` with ``x̃ = [x, 1]`` and
        ``c = mean_h w2_h² tanh'(a_h)²``: the Gauss–Newton block with its per-unit output
        factor averaged over the units and the cross-unit terms dropped (K-FAC's Kronecker
        form with a scalar output factor). Unlike the Gauss–Newton metric it keeps the scale
        of a saturated unit's weights (``tanh' ≈ 0`` made that block ~1e-86 and a whitened
        step of unit length moved them to 1e37), while the input factor ``⟨x̃ x̃ᵀ⟩`` keeps
        the whitened coordinates invariant to affine maps of the features.
        """
        X = np.asarray(self.dense_batch(X), dtype=np.float64)
        n, d, H = X.shape[0], self.n_features, self.hidden
        wt = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
        p = wt / wt.sum()
        W1, b1, w2, _ = self.unpack(theta)
        h = np.tanh(X @ W1.T + b1)                                   # (n, H)
        c = ((1.0 - h * h) ** 2) @ (w2 * w2) / H                     # (n,)
        Xt = np.hstack([X, np.ones((n, 1))])                          # (n, d + 1)
        A = (Xt * (p * c)[:, None]).T @ Xt                            # (d + 1, d + 1)
        Ht = np.hstack([h, np.ones((n, 1))])
        B = (Ht * p[:, None]).T @ Ht                                  # (H + 1, H + 1)
        G = np.zeros((self.n_params, self.n_params))
        for u in range(H):
            idx = np.r_[u * d:(u + 1) * d, H * d + u]
            G[np.ix_(idx, idx)] = A
        out = np.r_[H * d + H:H * d + 2 * H + 1]
        G[np.ix_(out, out)] = B
        return G

    def predict(self, X, theta) -> np.ndarray:
        """Network outputs ``f(x; θ)``, shape (n,)."""
        X = self.check_X(X)
        out = np.empty(X.shape[0])
        K.mlp_predict(X, as_float64_vector(theta, "theta", self.n_params), self.hidden, out)
        return out

    def sample_targets(self, X, theta, rng, k):
        """``k`` targets per row from ``N(f(x; θ), 1)``, shape (k, n)."""
        f = self.predict(X, theta)
        return f + rng.standard_normal((int(k), f.shape[0]))

    def metric_matvec(self, X, y, w, theta, U, *, metric):
        """Batch-average metric times ``U`` (P, k) from the factors, O(n P k)."""
        X = self.check_X(X)
        y = self.check_y(y, X.shape[0])
        theta = as_float64_vector(theta, "theta", self.n_params)
        if metric == "kfac":
            return self.kfac_metric(X, theta, w) @ U
        rng = np.random.default_rng(0) if metric == "monte-carlo" else None
        F = self.row_terms(X, y, theta, metric=metric, rng=rng).factors
        wt = np.ones(X.shape[0]) if w is None else as_float64_vector(w, "w", X.shape[0])
        FU = np.einsum("nkp,pm->nkm", F, U)
        return np.einsum("nkp,nkm->pm", F * wt[:, None, None], FU) / wt.sum()

    # -- evaluation -----------------------------------------------------------------------
    def evaluation_sums(self, X, y, theta):
        X = self.check_X(X)
        r = self.check_y(y, X.shape[0]) - self.predict(X, theta)
        return {"n": float(X.shape[0]), "sse": float(r @ r)}

    def evaluation_metrics(self, sums):
        n = sums["n"]
        return {"n": int(n), "mse": sums["sse"] / n}
