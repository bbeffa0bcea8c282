"""Generalized linear models with an intercept: logistic and linear regression.

Parameters are laid out as ``θ = [coef_0 … coef_{d-1}, intercept]``.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import WIDE_METRIC_PARAMS
from natgrad_stream.data.sparse import SparseRows, is_sparse
from natgrad_stream.models import _glm_kernels as K
from natgrad_stream.models import _glm_sparse_kernels as SK
from natgrad_stream.models._factor_kernels import accumulate_factors, new_factor_scratch
from natgrad_stream.models._gram_kernels import BLOCK_ROWS
from natgrad_stream.models.base import (
    Model,
    Workspace,
    as_float64_vector,
    check_monte_carlo,
    sparse_scratch,
    use_sparse_parallel,
)

#: Metric kinds computed inside the fused kernel; ``loss-gradient`` is ``empirical`` here
#: (the loss is −log q) and ``gauss-newton`` is the model Fisher of the Gaussian family.
_METRIC_CODES = {None: K.METRIC_NONE, "model": K.METRIC_MODEL, "empirical": K.METRIC_EMPIRICAL,
                 "loss-gradient": K.METRIC_EMPIRICAL, "gauss-newton": K.METRIC_MODEL,
                 "monte-carlo": K.METRIC_NONE}
#: The block structure runs the full kernel and keeps the diagonal blocks.
_STRUCTURE_CODES = {"full": K.STRUCTURE_FULL, "diagonal": K.STRUCTURE_DIAGONAL,
                    "block": K.STRUCTURE_FULL}
_EMPTY = np.empty(0)


def _weights(w, n):
    return _EMPTY if w is None else as_float64_vector(w, "w", n)


class _GLM(Model):
    family: int = -1
    scoring_converges = True  # canonical links: the model Fisher is the Hessian
    fast_metric_matvec = True
    sparse_kernels = True

    @property
    def n_params(self) -> int:
        return self.n_features + 1

    @property
    def intercept_index(self) -> int:
        return self.n_features

    def params_to_dict(self, theta):
        theta = np.asarray(theta, dtype=np.float64)
        return {"coef": theta[:-1].tolist(), "intercept": float(theta[-1])}

    def param_groups(self):
        """Coefficients and intercept."""
        return [("coef", 0, self.n_features), ("intercept", self.n_features, self.n_params)]

    def _scratch(self, structure, n_threads):
        P = self.n_params
        full = structure != "diagonal"
        return {
            **new_factor_scratch(P, structure, n_threads),
            "ST": np.zeros((P, BLOCK_ROWS)),
            "ST_t": np.zeros((n_threads, P, BLOCK_ROWS)),
            "grad_t": np.zeros((n_threads, P)),
            # wide models split the metric's rows over threads instead (no T copies)
            "fisher_t": np.zeros((n_threads, P, P) if full and P < WIDE_METRIC_PARAMS
                                 else (n_threads, 1, 1)),
            "fdiag_t": np.zeros((n_threads, 1) if full else (n_threads, P)),
            "dummy_full": np.zeros((1, 1)),
            "dummy_diag": np.zeros(1),
        }

    def accumulate(self, X, y, w, theta, *, metric, structure, ws: Workspace, parallel=None,
                   rng=None, mc_samples=1):
        self.check_request(metric, structure, ws)
        X = self.check_X(X)
        n = X.shape[0]
        y = as_float64_vector(y, "y", n)
        w = _weights(w, n)
        theta = as_float64_vector(theta, "theta", self.n_params)
        ws.grad[:] = 0.0
        if metric is not None or not ws.fisher_zero:
            ws.fisher[...] = 0.0
        ws.fisher_zero = metric is None  # (no kernel writes the metric without one)
        if isinstance(X, SparseRows):
            return self._accumulate_sparse(X, y, w, theta, metric, structure, ws, parallel,
                                           rng, mc_samples)
        m, s = _METRIC_CODES[metric], _STRUCTURE_CODES[structure]
        sc = ws.scratch
        full, diag = (sc["dummy_full"], ws.fisher) if structure == "diagonal" else \
            (ws.fisher, sc["dummy_diag"])
        par = self.use_parallel(n, parallel)
        if par and structure == "full" and metric is not None and \
                self.n_params >= WIDE_METRIC_PARAMS:
            out = K.glm_accumulate_wide(X, y, w, theta, self.family, m, ws.grad, ws.fisher,
                                        sc["ST"])
        elif par:
            out = K.glm_accumulate_parallel(X, y, w, theta, self.family, m, s, ws.grad, full,
                                            diag, sc["grad_t"], sc["fisher_t"], sc["fdiag_t"],
                                            sc["ST_t"])
        else:
            out = K.glm_accumulate(X, y, w, theta, self.family, m, s, ws.grad, full, diag,
                                   sc["ST"])
        if metric == "monte-carlo":
            U = self.monte_carlo_factors(X, theta, rng, mc_samples)
            accumulate_factors(U, w, structure, self.param_bounds(), ws.fisher, sc, par)
        elif structure == "block" and metric is not None:
            bounds = self.param_bounds()
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                ws.fisher[a:b, b:] = 0.0
                ws.fisher[b:, a:b] = 0.0
        return out

    def _accumulate_sparse(self, X: SparseRows, y, w, theta, metric, structure, ws, parallel,
                           rng, mc_samples):
        """:meth:`accumulate` on CSR rows (``_glm_sparse_kernels``; ``y``, ``w``, ``theta``
        checked and ``ws`` cleared by the caller); the Monte Carlo metric as per-row
        weights ``(1/k) Σ_j (μ_i − y_ij)²`` (the same draws as the dense path).
        """
        n = X.shape[0]
        m, s = _METRIC_CODES[metric], _STRUCTURE_CODES[structure]
        cw = _EMPTY
        if metric == "monte-carlo":
            k = check_monte_carlo(rng, mc_samples)
            mu = self.predict_mean(X, theta)
            cw = np.mean((mu - self._sample(mu, rng, (k, n))) ** 2, axis=0)
            m = SK.METRIC_GIVEN
        sc = ws.scratch
        sp = sparse_scratch(ws, self.n_params, self.n_params)
        full, diag = (sc["dummy_full"], ws.fisher) if structure == "diagonal" else \
            (ws.fisher, sc["dummy_diag"])
        if use_sparse_parallel(self, X, structure, metric, parallel, sp):
            out = SK.glm_sparse_accumulate_parallel(
                X.data, X.indices, X.indptr, y, w, cw, theta, self.family, m, s, ws.grad,
                full, diag, sp["grad_t"], sc["fisher_t"], sp["fdiag_t"], sp["xrow_t"])
        else:
            out = SK.glm_sparse_accumulate(X.data, X.indices, X.indptr, y, w, cw, theta,
                                           self.family, m, s, ws.grad, full, diag,
                                           sp["xrow_t"][0])
        if structure == "block" and metric is not None:
            d = self.n_features
            ws.fisher[:d, d] = 0.0
            ws.fisher[d, :d] = 0.0
        return out

    def scores(self, X, y, theta):
        X = self.check_X(X)
        if isinstance(X, SparseRows):
            out = np.zeros((X.shape[0], self.n_params))
            SK.glm_sparse_scores(X.data, X.indices, X.indptr,
                                 as_float64_vector(y, "y", X.shape[0]),
                                 as_float64_vector(theta, "theta", self.n_params), self.family,
                                 out)
            return out
        out = np.empty((X.shape[0], self.n_params))
        K.glm_scores(X, as_float64_vector(y, "y", X.shape[0]),
                     as_float64_vector(theta, "theta", self.n_params), self.family, out)
        return out

    def initial_params(self, X, y, w):
        """Zero coefficients and the intercept at the link of the weighted mean target."""
        y = as_float64_vector(y, "y", X.shape[0])
        wt = np.ones_like(y) if w is None else as_float64_vector(w, "w", y.shape[0])
        if not wt.sum() > 0:
            return None
        b = self._link(float(wt @ y / wt.sum()))
        if b is None or not np.isfinite(b):
            return None
        theta = self.init_params()
        theta[self.intercept_index] = b
        return theta

    def _link(self, mean: float) -> float | None:
        return mean

    def sample_targets(self, X, theta, rng, k):
        """``k`` targets per row from ``q(y | x; θ)``, shape (k, n)."""
        mu = self.predict_mean(X, theta)
        return self._sample(mu, rng, (int(k), mu.shape[0]))

    def _sample(self, mu, rng, shape):
        raise NotImplementedError

    def predict_mean(self, X, theta) -> np.ndarray:
        """``E[y | x]`` for each row, shape (n,)."""
        X = self.check_X(X)
        out = np.empty(X.shape[0])
        if isinstance(X, SparseRows):
            SK.glm_sparse_mean(X.data, X.indices, X.indptr,
                               as_float64_vector(theta, "theta", self.n_params), self.family,
                               out)
            return out
        K.glm_mean(X, as_float64_vector(theta, "theta", self.n_params), self.family, out)
        return out

    def _metric_weights(self, X, theta):
        raise NotImplementedError

    def model_fisher(self, X, theta, w=None):
        X = self.check_X(X)
        if isinstance(X, SparseRows):
            c = self._metric_weights(X, theta)
            if w is not None:
                c = c * np.asarray(w, dtype=np.float64)
            return _sparse_weighted_gram(X, c) / (c.shape[0] if w is None else np.sum(w))
        Xt = np.hstack([X.astype(np.float64), np.ones((X.shape[0], 1))])
        c = self._metric_weights(X, theta)
        if w is not None:
            c = c * np.asarray(w, dtype=np.float64)
        return (Xt * c[:, None]).T @ Xt / c.shape[0] if w is None else \
            (Xt * c[:, None]).T @ Xt / np.sum(w)

    def metric_matvec(self, X, y, w, theta, U, *, metric):
        X = self.check_X(X)
        if isinstance(X, SparseRows):
            return self._sparse_matvec(X, y, w, theta, U, metric)
        if metric in ("model", "gauss-newton"):
            c = self._metric_weights(X, theta)
        elif metric == "monte-carlo":
            S = self.monte_carlo_factors(X, theta, np.random.default_rng(0), 1)[:, 0, :]
            wt = np.ones(X.shape[0]) if w is None else as_float64_vector(w, "w", X.shape[0])
            return S.T @ (wt[:, None] * (S @ U)) / wt.sum()
        else:
            r = self.predict_mean(X, theta) - as_float64_vector(y, "y", X.shape[0])
            c = r * r
        wt = np.ones(X.shape[0]) if w is None else as_float64_vector(w, "w", X.shape[0])
        return _dense_weighted_matvec(X, c * wt, np.asarray(U, dtype=np.float64)) / wt.sum()

    def curvature_power_iteration(self, X, y, w, theta, inverse, penalty, v, iterations, *,
                                  metric):
        """:meth:`Model.curvature_power_iteration` on CSR rows with the model metric
        (``glm_sparse_curvature``: each row's weight computed once, no (P,) temporaries);
        None for dense rows, other metrics or a penalized set that is not contiguous.
        """
        span = penalty.span
        if not is_sparse(X) or metric not in ("model", "gauss-newton") or span is None:
            return None  # (dense rows: not even checked here; the generic loop does)
        X = self.check_X(X)
        n, P = X.shape[0], self.n_params
        v = np.array(v, dtype=np.float64).reshape(P)  # (a copy: overwritten)
        return float(SK.glm_sparse_curvature(
            X.data, X.indices, X.indptr, _weights(w, n), as_float64_vector(theta, "theta", P),
            self.family, as_float64_vector(inverse, "inverse", P), float(penalty.lam),
            span[0], span[1], v, int(iterations), np.empty(P), np.empty(P), np.empty(n)))

    def _sparse_matvec(self, X: SparseRows, y, w, theta, U, metric):
        """:meth:`metric_matvec` on CSR rows: ``Σ_i w_i c_i x̃_i (x̃_iᵀ U) / Σ w``, O(nnz·k),
        with the row weights ``c_i`` of the dense path (the Monte Carlo scores at the same
        draws are ``(y_i − μ_i) x̃_i``).
        """
        n = X.shape[0]
        if metric in ("model", "gauss-newton") and U.shape[1] == 1:  # one fused read
            out = np.zeros(self.n_params)
            wsum = SK.glm_sparse_hess_vec(X.data, X.indices, X.indptr, _weights(w, n),
                                          as_float64_vector(theta, "theta", self.n_params),
                                          self.family,
                                          np.ascontiguousarray(U[:, 0], dtype=np.float64), out)
            return (out / wsum)[:, None]
        if metric in ("model", "gauss-newton"):
            c = self._metric_weights(X, theta)
        else:
            target = self.sample_targets(X, theta, np.random.default_rng(0), 1)[0] \
                if metric == "monte-carlo" else as_float64_vector(y, "y", n)
            r = self.predict_mean(X, theta) - target
            c = r * r
        wt = np.ones(n) if w is None else as_float64_vector(w, "w", n)
        U = np.ascontiguousarray(U, dtype=np.float64)
        out = np.zeros_like(U)
        SK.sparse_gram_matvec(X.data, X.indices, X.indptr, c * wt, U, out)
        return out / wt.sum()

    supports_weighted_evaluation = True

    def evaluation_sums(self, X, y, theta, w=None):
        """Sums over a batch; with sample weights ``w`` every mean becomes a weighted mean
        (``n`` stays the row count; ``weight`` is the weights' sum).
        """
        X = self.check_X(X)
        args = (as_float64_vector(y, "y", X.shape[0]), _weights(w, X.shape[0]),
                as_float64_vector(theta, "theta", self.n_params), self.family)
        if isinstance(X, SparseRows):
            loss, second, wsum = SK.glm_sparse_evaluate(X.data, X.indices, X.indptr, *args)
        else:
            loss, second, wsum = K.glm_evaluate(X, *args)
        return {"n": float(X.shape[0]), "weight": wsum, "loss": loss, "second": second}


def _sparse_weighted_gram(X: SparseRows, c: np.ndarray) -> np.ndarray:
    """``X̃ᵀ diag(c) X̃`` (``X̃ = [X, 1]``) of CSR rows by SciPy, dense (P, P)."""
    import scipy.sparse as sp

    A = X.to_scipy().astype(np.float64)
    d = X.shape[1]
    out = np.empty((d + 1, d + 1))
    out[:d, :d] = (A.T @ sp.diags(c) @ A).toarray()
    out[:d, d] = out[d, :d] = A.T @ c
    out[d, d] = c.sum()
    return out


class LogisticRegression(_GLM):
    """Binary logistic regression, ``P(y=1|x) = sigmoid(x·β + b)``, labels in {0, 1}.

    Loss: the negative log-likelihood (log-loss). Model Fisher: ``⟨p(1−p) x̃ x̃ᵀ⟩``.
    """

    name = "logistic"
    family = K.FAMILY_LOGISTIC

    def _metric_weights(self, X, theta):
        p = self.predict_mean(X, theta)
        return p * (1.0 - p)

    def _sample(self, mu, rng, shape):
        return (rng.random(shape) < mu).astype(np.float64)

    def _link(self, mean):
        return None if not 0.0 < mean < 1.0 else float(np.log(mean / (1.0 - mean)))

    def evaluation_metrics(self, sums):
        n, wsum = sums["n"], sums.get("weight", sums["n"])
        return {"n": int(n), "log_loss": sums["loss"] / wsum, "accuracy": sums["second"] / wsum}

    def target_check(self):
        return check_binary_labels


class LinearRegression(_GLM):
    """Least-squares linear regression, read as a Gaussian with unit noise variance.

    Loss: ``½ (y − x·β − b)²``. Model Fisher: ``⟨x̃ x̃ᵀ⟩`` (the noise variance cancels in
    the natural gradient ``G⁻¹∇J``).
    """

    name = "linear"
    family = K.FAMILY_LINEAR
    metrics = ("model", "empirical", "loss-gradient", "monte-carlo", "gauss-newton")

    def _metric_weights(self, X, theta):
        return np.ones(X.shape[0])

    def _sample(self, mu, rng, shape):
        return mu + rng.standard_normal(shape)

    def evaluation_metrics(self, sums):
        n, wsum = sums["n"], sums.get("weight", sums["n"])
        return {"n": int(n), "mse": sums["second"] / wsum}


class PoissonRegression(_GLM):
    """Poisson regression with log link, ``y ~ Poisson(exp(x·β + b))``.

    Loss: ``μ − y z`` (the negative log-likelihood without ``log y!``). Model Fisher:
    ``⟨μ x̃ x̃ᵀ⟩``. Exposure: pass the rate ``y/t`` as the target and the exposure ``t`` as
    the sample weight (``--w``); the weighted loss then has the estimating equations of
    ``y ~ Poisson(t·exp(x·β + b))``.
    """

    name = "poisson"
    family = K.FAMILY_POISSON

    def _metric_weights(self, X, theta):
        return self.predict_mean(X, theta)

    def _sample(self, mu, rng, shape):
        return rng.poisson(np.broadcast_to(mu, shape)).astype(np.float64)

    def _link(self, mean):
        return None if not mean > 0.0 else float(np.log(mean))

    def evaluation_metrics(self, sums):
        n, wsum = sums["n"], sums.get("weight", sums["n"])
        return {"n": int(n), "mean_deviance": sums["second"] / wsum, "nll": sums["loss"] / wsum}

    def target_check(self):
        return check_counts


#: Bytes of float64 rows :func:`_dense_weighted_matvec` converts at a time.
MATVEC_BLOCK_BYTES = 8 << 20


def _dense_weighted_matvec(X: np.ndarray, c: np.ndarray, U: np.ndarray) -> np.ndarray:
    """``Σ_i c_i x̃_i x̃_iᵀ U`` (shape (d + 1, k)) for dense rows ``X`` (n, d), ``x̃ = (x,
    1)``, ``c`` (n,), ``U`` (d + 1, k), in blocks of rows converted to float64 within
    :data:`MATVEC_BLOCK_BYTES`: no (n, d + 1) float64 copy of the batch (at d = 10,000 a
    batch of 8,192 float32 rows took 7.9 s to widen and stack, the product itself less).
    """
    n, d = X.shape
    Uf, Ub = U[:d], U[d]
    out = np.zeros((d + 1, U.shape[1]))
    step = max(1, min(n, MATVEC_BLOCK_BYTES // (8 * max(d, 1))))
    buf = None if X.dtype == np.float64 else np.empty((step, d))
    for i in range(0, n, step):
        m = min(step, n - i)
        if buf is None:
            B = X[i:i + m]
        else:
            B = buf[:m]
            B[...] = X[i:i + m]
        Z = B @ Uf
        Z += Ub
        Z *= c[i:i + m, None]
        out[:d] += B.T @ Z
        out[d] += Z.sum(axis=0)
    return out


def check_counts(name: str, block: np.ndarray):
    """Data check: Poisson targets (counts or rates) must be >= 0."""
    bad = np.flatnonzero(~(block >= 0))
    if bad.size:
        return int(bad[0]), f"target {block[bad[0]].item()!r} is negative (Poisson counts are >= 0)"
    return None


def check_binary_labels(name: str, block: np.ndarray):
    """Data check: labels must be 0 or 1 (any numeric dtype)."""
    bad = np.flatnonzero((block != 0) & (block != 1))
    if bad.size:
        return int(bad[0]), (
            f"label {block[bad[0]].item()!r} is outside the logistic model's domain {{0, 1}}"
        )
    return None
