"""Multinomial (softmax) logistic regression with a reference class.

``P(y = c | x) = exp(z_c) / Σ_k exp(z_k)`` with ``z_0 = 0`` and ``z_c = x·β_c + b_c`` for
``c = 1 … K−1``: class 0 is the reference, as in statsmodels' ``MNLogit``, which makes the
parameterization identifiable and the model Fisher non-singular (the symmetric
parameterization with K free blocks has a null direction: adding one vector to every
block changes nothing). θ holds, for ``c = 1 … K−1``, the block ``[β_c (d), b_c]``.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from natgrad_stream._jit import num_threads
from natgrad_stream.data.sparse import SparseRows
from natgrad_stream.errors import DataError
from natgrad_stream.models import _softmax_kernels as K
from natgrad_stream.models import _softmax_kronecker_kernels as KK
from natgrad_stream.models import _softmax_sparse_kernels as SK
from natgrad_stream.models._gram_kernels import BLOCK_ROWS
from natgrad_stream.models.base import (
    Model,
    Workspace,
    as_float64_vector,
    check_monte_carlo,
    sparse_scratch,
    use_sparse_parallel,
)

_METRIC_CODES = {None: K.METRIC_NONE, "model": K.METRIC_MODEL, "empirical": K.METRIC_EMPIRICAL,
                 "loss-gradient": K.METRIC_EMPIRICAL, "monte-carlo": K.METRIC_MONTE_CARLO}
_STRUCTURE_CODES = {"full": K.STRUCTURE_FULL, "diagonal": K.STRUCTURE_DIAGONAL,
                    "block": K.STRUCTURE_BLOCK}
_EMPTY = np.empty(0)
#: From this many parameters on, a CSR batch's sums without a metric or with the diagonal
#: one go through the feature-major kernel (``softmax_sparse_accumulate_fm``): θ then
#: outgrows the caches, and the class-major kernel misses one on every class of every
#: non-zero (1.5 s against 36 ms a 1,024-row batch at 20,000 genes × 60 classes).
SOFTMAX_FEATURE_MAJOR_PARAMS = 1 << 16
_NO_UNIFORMS = np.empty((0, 0))
#: Rows per block read when scanning a target array for its largest label.
_SCAN_ROWS = 1 << 20


def _label_problem(block: np.ndarray, n_classes: int | None):
    """Offset and description of the first label that is not an integer in ``[0, K)``."""
    v = np.asarray(block)
    if v.dtype.kind in "iub":
        ok = v >= 0 if n_classes is None else (v >= 0) & (v < n_classes)
    else:
        ok = (v >= 0) & (v == np.floor(v))
        if n_classes is not None:
            ok &= v < n_classes
    bad = np.flatnonzero(~ok)
    if not bad.size:
        return None
    i = int(bad[0])
    value = v[i].item()
    if v.dtype.kind == "f" and not (np.isfinite(value) and value == math.floor(value)):
        return i, f"label {value!r} is not an integer class index"
    domain = "0, 1, …" if n_classes is None else f"0 … {n_classes - 1}"
    return i, f"label {value!r} is outside the softmax model's classes {domain}"


def check_class_labels(name: str, block: np.ndarray, *, n_classes: int):
    """Data check: labels must be integer class indices ``0 … n_classes − 1``.

    Any numeric dtype is accepted (floats must hold whole numbers).
    """
    return _label_problem(block, n_classes)


class SoftmaxRegression(Model):
    """Multinomial logistic regression, ``K`` classes, reference class 0.

    Parameters
    ----------
    n_features : int
        ``d``.
    n_classes : int
        ``K >= 2``. Labels are the integers ``0 … K−1`` (any numeric dtype).

    Notes
    -----
    Loss per row: ``−log p_y(x) = logsumexp(z) − z_y``. Model Fisher per row (eq. 30, in
    closed form): ``(diag(p′) − p′p′ᵀ) ⊗ x̃x̃ᵀ`` with ``p′ = (p_1 … p_{K−1})`` and
    ``x̃ = [x, 1]``; it equals the Hessian of the loss (canonical link), so natural-gradient
    steps of size 1 on whole batches are Newton / Fisher-scoring steps. The intercepts
    ``b_1 … b_{K−1}`` are :attr:`center_indices`: the whitener eliminates them exactly.

    Examples
    --------
    >>> model = SoftmaxRegression(4, n_classes=3)
    >>> model.n_params, model.center_indices
    (10, (4, 9))
    """

    scoring_converges = True  # canonical link: the model Fisher is the Hessian
    fast_metric_matvec = True

    name = "softmax"
    metrics = ("model", "empirical", "loss-gradient", "monte-carlo")
    sparse_kernels = True

    def __init__(self, n_features: int, *, n_classes: int):
        super().__init__(n_features)
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral):
            raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = int(n_classes)

    # -- parameter layout ---------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return (self.n_classes - 1) * (self.n_features + 1)

    @property
    def center_indices(self) -> tuple[int, ...]:
        """The K−1 intercepts ``b_c`` (index ``(c−1)(d+1) + d``)."""
        D = self.n_features + 1
        return tuple(a * D + self.n_features for a in range(self.n_classes - 1))

    def param_groups(self):
        """One group ``[β_c, b_c]`` per non-reference class ``c``."""
        D = self.n_features + 1
        return [(f"class_{c}", (c - 1) * D, c * D) for c in range(1, self.n_classes)]

    def config(self):
        return {**super().config(), "n_classes": self.n_classes}

    def coef_intercept(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """``(coef (K, d), intercept (K,))`` with the reference class 0 as zeros."""
        theta = as_float64_vector(theta, "theta", self.n_params)
        B = theta.reshape(self.n_classes - 1, self.n_features + 1)
        coef = np.vstack([np.zeros((1, self.n_features)), B[:, :-1]])
        return coef, np.r_[0.0, B[:, -1]]

    def params_to_dict(self, theta):
        coef, intercept = self.coef_intercept(theta)
        return {"coef": coef.tolist(), "intercept": intercept.tolist()}

    @classmethod
    def options_from_data(cls, group, source, options):
        """``n_classes``: ``options["classes"]`` if given, else the categories of a
        categorical target (an AnnData ``obs`` column), else the dataset's recorded true
        number of classes, else 1 + the largest label found by scanning the targets.
        """
        if options.get("classes") is not None:
            return {"n_classes": int(options["classes"])}
        names = getattr(source, "class_names", None)
        if names is not None and len(names) >= 2:  # a categorical target: its categories
            return {"n_classes": len(names)}
        if group is not None:
            from natgrad_stream.data.metadata import attribute_int, group_attribute

            where = getattr(group.store, "root", None) or group.store
            true = group_attribute(group).get("true_params") or {}
            if not isinstance(true, dict):
                raise DataError(f"group attribute 'natgrad_stream'.true_params of {where} "
                                f"must be a JSON object, got {type(true).__name__}")
            k = attribute_int(true, "n_classes", f"group attribute 'natgrad_stream'."
                              f"true_params of {where}", minimum=2)
            if k is not None:
                return {"n_classes": k}
        y = getattr(source, "y", None)
        if y is None or getattr(source, "n_rows", None) is None:
            raise ValueError("softmax: cannot tell the number of classes from this data; "
                             "pass --classes")
        n = int(source.n_rows)
        step = max(int(getattr(source, "chunk_rows", _SCAN_ROWS)), 1)
        step *= max(1, _SCAN_ROWS // step)
        top = -1
        for a in range(0, n, step):
            block = np.asarray(y[a:min(a + step, n)])
            bad = _label_problem(block, None)
            if bad is not None:
                raise DataError(bad[1], array=getattr(source, "names", ("X", "y"))[1],
                                row=a + bad[0])
            if block.size:
                top = max(top, int(block.max()))
        if top < 1:
            raise ValueError(f"softmax: the labels hold {top + 1} class(es); at least 2 are "
                             "needed (pass --classes to fit a declared class count)")
        return {"n_classes": top + 1}

    def target_check(self):
        return functools.partial(check_class_labels, n_classes=self.n_classes)

    def check_y(self, y, n: int) -> np.ndarray:
        """Labels as a float64 vector of length ``n``, each an integer in ``[0, K)``."""
        if y is None:
            raise ValueError("model 'softmax' needs class labels y")
        v = as_float64_vector(y, "y", n)
        bad = _label_problem(v, self.n_classes)
        if bad is not None:
            raise ValueError(f"y[{bad[0]}]: {bad[1]}")
        return v

    # -- batch statistics ---------------------------------------------------------------
    def _scratch(self, structure, n_threads):
        D, P = self.n_features + 1, self.n_params
        pa, pb = K.class_pairs(self.n_classes, _STRUCTURE_CODES[structure])
        Q = pa.shape[0]
        diag = structure == "diagonal"
        return {
            "structure": structure, "pa": pa, "pb": pb,
            "S": np.zeros((1, 1, 1) if diag else (Q, D, D)),
            "XT": np.zeros((D, BLOCK_ROWS)), "YT": np.zeros((D, BLOCK_ROWS)),
            "WT": np.zeros((max(Q, 1), BLOCK_ROWS)),
            "grad_t": np.zeros((n_threads, P)),
            "S_t": np.zeros((n_threads, 1, 1, 1) if diag else (n_threads, Q, D, D)),
            "gdiag_t": np.zeros((n_threads, P) if diag else (n_threads, 1)),
            "XT_t": np.zeros((n_threads, D, BLOCK_ROWS)),
            "YT_t": np.zeros((n_threads, D, BLOCK_ROWS)),
            "WT_t": np.zeros((n_threads, max(Q, 1), BLOCK_ROWS)),
            "dummy_full": np.zeros((1, 1)), "dummy_diag": np.zeros(1),
        }

    def accumulate(self, X, y, w, theta, *, metric, structure, ws: Workspace, parallel=None,
                   rng=None, mc_samples=1):
        X = self.check_X(X)
        n = X.shape[0]
        y = self.check_y(y, n)
        w = _EMPTY if w is None else as_float64_vector(w, "w", n)
        theta = as_float64_vector(theta, "theta", self.n_params)
        self.check_request(metric, structure, ws)
        if ws.scratch.get("structure") != structure:  # a full workspace asked for blocks
            T = len(ws.scratch["grad_t"]) if "grad_t" in ws.scratch else num_threads()
            ws.scratch.update(self._scratch(structure, T))
        m, s = _METRIC_CODES[metric], _STRUCTURE_CODES[structure]
        U = _NO_UNIFORMS
        if metric == "monte-carlo":
            check_monte_carlo(rng, mc_samples)
            U = rng.random((int(mc_samples), n))
        sc = ws.scratch
        if structure == "diagonal":
            G, gdiag = sc["dummy_full"], ws.fisher
        else:
            G, gdiag = ws.fisher, sc["dummy_diag"]
        if isinstance(X, SparseRows) and structure == "diagonal" and not parallel and \
                self.n_params >= SOFTMAX_FEATURE_MAJOR_PARAMS:
            out = self._accumulate_feature_major(X, y, w, theta, m, U, ws)
        elif isinstance(X, SparseRows):
            sp = sparse_scratch(ws, self.n_params, self.n_features + 1)
            csr = (X.data, X.indices, X.indptr, y, w, theta, m, s, U, sc["pa"], sc["pb"],
                   ws.grad, G, gdiag, sc["S"])
            if use_sparse_parallel(self, X, structure, metric, parallel, sp):
                out = SK.softmax_sparse_accumulate_parallel(*csr, sp["grad_t"], sc["S_t"],
                                                            sp["fdiag_t"], sp["xrow_t"])
            else:
                out = SK.softmax_sparse_accumulate(*csr, sp["xrow_t"][0])
        elif self.use_parallel(n, parallel):
            out = K.softmax_accumulate_parallel(
                X, y, w, theta, m, s, U, sc["pa"], sc["pb"], ws.grad, G, gdiag, sc["S"],
                sc["grad_t"], sc["S_t"], sc["gdiag_t"], sc["XT_t"], sc["YT_t"], sc["WT_t"])
        else:
            out = K.softmax_accumulate(X, y, w, theta, m, s, U, sc["pa"], sc["pb"], ws.grad,
                                       G, gdiag, sc["S"], sc["XT"], sc["YT"], sc["WT"])
        if metric is None:
            ws.fisher[...] = 0.0
        return out

    def _accumulate_feature_major(self, X, y, w, theta, metric_code, U, ws):
        """A CSR batch's sums for no metric or the diagonal one through the
        feature-major kernel: θ, the gradient and the diagonal transposed to (D, K − 1)
        (O(P) a batch, against the class-major kernel's cache misses on every non-zero).
        """
        D = self.n_features + 1
        m = self.n_classes - 1
        sc = ws.scratch
        if sc.get("fm_grad") is None or sc["fm_grad"].shape != (D, m):
            sc["fm_theta"] = np.empty((D, m))
            sc["fm_grad"] = np.empty((D, m))
            sc["fm_diag"] = np.empty((D, m))
        thetaT = sc["fm_theta"]
        thetaT[...] = theta.reshape(m, D).T
        out = SK.softmax_sparse_accumulate_fm(X.data, X.indices, X.indptr, y, w, thetaT,
                                              metric_code, U, sc["fm_grad"], sc["fm_diag"])
        ws.grad.reshape(m, D)[...] = sc["fm_grad"].T
        if metric_code != K.METRIC_NONE:
            ws.fisher.reshape(m, D)[...] = sc["fm_diag"].T
        return out

    def kronecker_sums(self, X, y, w, theta, *, metric, rng=None, mc_samples=1):
        """A batch's sums of the metric's Kronecker factors (``--structure kronecker``):
        the feature factor ``F = Σ w_i x̃_i x̃_iᵀ`` (shape (D, D), ``D = d + 1``, the
        intercept's 1 last), the class factor ``S = Σ w_i A_i`` (shape (K − 1, K − 1),
        ``A_i`` the row's class weight for ``metric``) and ``Σ w_i``; the mean metric is
        approximated by ``(S/Σw) ⊗ (F/Σw)`` (:mod:`natgrad_stream.geometry.kronecker`).
        Dense or CSR rows.
        """
        X = self.check_X(X)
        n = X.shape[0]
        y = self.check_y(y, n)
        w = _EMPTY if w is None else as_float64_vector(w, "w", n)
        theta = as_float64_vector(theta, "theta", self.n_params)
        if metric not in self.metrics:
            raise ValueError(f"model 'softmax' does not support metric {metric!r}")
        code = _METRIC_CODES[metric]
        U = _NO_UNIFORMS
        if metric == "monte-carlo":
            check_monte_carlo(rng, mc_samples)
            U = rng.random((int(mc_samples), n))
        D, m = self.n_features + 1, self.n_classes - 1
        F, S = np.zeros((D, D)), np.zeros((m, m))
        if isinstance(X, SparseRows):
            wsum = KK.kronecker_factors_sparse(X.data, X.indices, X.indptr, y, w, theta, code,
                                               U, S, F)
        else:
            wsum = KK.kronecker_factors_dense(X, y, w, theta, code, U, np.zeros((D, BLOCK_ROWS)),
                                              np.zeros((D, BLOCK_ROWS)), np.zeros(BLOCK_ROWS),
                                              S, F)
        F += np.triu(F, 1).T  # (the kernels fill the upper triangle)
        return F, S, float(wsum)

    def predict_proba(self, X, theta) -> np.ndarray:
        """Class probabilities, shape (n, K)."""
        X = self.check_X(X)
        out = np.empty((X.shape[0], self.n_classes))
        theta = as_float64_vector(theta, "theta", self.n_params)
        if isinstance(X, SparseRows) and self.n_params >= SOFTMAX_FEATURE_MAJOR_PARAMS:
            SK.softmax_sparse_proba_fm(X.data, X.indices, X.indptr, self._feature_major(theta),
                                       out)
        elif isinstance(X, SparseRows):
            SK.softmax_sparse_proba(X.data, X.indices, X.indptr, theta, out)
        else:
            K.softmax_proba(X, theta, out)
        return out

    def _feature_major(self, theta) -> np.ndarray:
        """θ as (D, K − 1): each feature's class coefficients contiguous (a new array)."""
        return np.ascontiguousarray(theta.reshape(self.n_classes - 1, self.n_features + 1).T)

    def scores(self, X, y, theta):
        X = self.check_X(X)
        if isinstance(X, SparseRows):
            out = np.zeros((X.shape[0], self.n_params))
            SK.softmax_sparse_scores(X.data, X.indices, X.indptr, self.check_y(y, X.shape[0]),
                                     as_float64_vector(theta, "theta", self.n_params),
                                     self.n_classes, out)
            return out
        out = np.empty((X.shape[0], self.n_params))
        K.softmax_scores(X, self.check_y(y, X.shape[0]),
                         as_float64_vector(theta, "theta", self.n_params), out)
        return out

    def sample_targets(self, X, theta, rng, k):
        """``k`` labels per row drawn from ``p(y | x; θ)``, shape (k, n), float64."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        proba = self.predict_proba(X, theta)
        out = np.empty((int(k), proba.shape[0]))
        K.sample_labels(proba, rng.random((int(k), proba.shape[0])), out)
        return out

    def model_fisher(self, X, theta, w=None):
        """Closed-form model Fisher averaged over the rows of ``X``, shape (P, P)."""
        X = self.check_X(X)
        return self.batch_metric(X, np.zeros(X.shape[0]), theta, w, metric="model")

    def metric_matvec(self, X, y, w, theta, U, *, metric):
        """``G U`` for the batch-average metric without forming ``G``: O(n P k).

        Row ``i`` contributes ``(A_i ⊗ x̃_i x̃_iᵀ) u``, i.e. block ``a`` gets
        ``x̃_i Σ_b A_i[a, b] (x̃_i·u_b)``.
        """
        X = self.check_X(X)
        n = X.shape[0]
        theta = as_float64_vector(theta, "theta", self.n_params)
        U = np.asarray(U, dtype=np.float64)
        m, D = self.n_classes - 1, self.n_features + 1
        if isinstance(X, SparseRows) and metric == "model" and U.shape[1] == 1 and \
                self.n_params >= SOFTMAX_FEATURE_MAJOR_PARAMS:  # fused, feature-major
            outT = np.zeros((D, m))
            wsum = SK.softmax_sparse_hess_vec_fm(
                X.data, X.indices, X.indptr, _EMPTY if w is None else as_float64_vector(
                    w, "w", n), self._feature_major(theta), self._feature_major(U[:, 0]),
                outT)
            return (outT.T.reshape(-1) / wsum)[:, None]
        V = U.reshape(m, D, -1)
        if isinstance(X, SparseRows):
            A = X.to_scipy().astype(np.float64)
            XV = np.stack([A @ V[a, :-1] + V[a, -1] for a in range(m)], axis=1)
        else:
            Xt = np.hstack([X.astype(np.float64), np.ones((n, 1))])
            XV = np.einsum("nj,ajk->nak", Xt, V)  # (n, m, k): x̃_i·u_a
        pp = self.predict_proba(X, theta)[:, 1:]
        if metric == "model":
            Y = pp[:, :, None] * XV - pp[:, :, None] * np.einsum("na,nak->nk", pp, XV)[:, None]
        elif metric in ("empirical", "loss-gradient", "monte-carlo"):
            if metric == "monte-carlo":
                labels = self.sample_targets(X, theta, np.random.default_rng(0), 1)[0]
            else:
                labels = self.check_y(y, n)
            r = pp.copy()
            rows = np.flatnonzero(labels > 0)
            r[rows, labels[rows].astype(np.int64) - 1] -= 1.0
            Y = r[:, :, None] * np.einsum("na,nak->nk", r, XV)[:, None]
        else:
            raise ValueError(f"model 'softmax' does not support metric {metric!r}")
        wt = np.ones(n) if w is None else as_float64_vector(w, "w", n)
        if isinstance(X, SparseRows):
            Z = wt[:, None, None] * Y
            out = np.stack([np.vstack([A.T @ Z[:, a], Z[:, a].sum(axis=0)])
                            for a in range(m)]) / wt.sum()
        else:
            out = np.einsum("nj,nak->ajk", Xt * wt[:, None], Y) / wt.sum()
        return out.reshape(self.n_params, -1)

    # -- evaluation ---------------------------------------------------------------------
    def evaluation_sums(self, X, y, theta):
        X = self.check_X(X)
        args = (self.check_y(y, X.shape[0]), as_float64_vector(theta, "theta", self.n_params),
                self.n_classes)
        if isinstance(X, SparseRows):
            loss, correct = SK.softmax_sparse_evaluate(X.data, X.indices, X.indptr, *args)
        else:
            loss, correct = K.softmax_evaluate(X, *args)
        return {"n": float(X.shape[0]), "loss": loss, "correct": correct}

    def evaluation_metrics(self, sums):
        n = sums["n"]
        return {"n": int(n), "log_loss": sums["loss"] / n, "accuracy": sums["correct"] / n}
