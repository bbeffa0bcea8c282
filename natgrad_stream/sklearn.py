"""scikit-learn estimators backed by :class:`~natgrad_stream.learner.NaturalGradientLearner`.

- :class:`NaturalGradientClassifier`: logistic regression (two classes) or softmax
  regression (more), any label type through ``classes_``;
- :class:`NaturalGradientRegressor`: least squares (the ``linear`` model);
- :class:`NaturalGradientPoissonRegressor`: Poisson regression with a log link.

Each is L2-penalized with its scikit-learn counterpart's parameter, meaning and default,
so that it can be swapped in: the classifier's ``C`` is ``LogisticRegression``'s (default
1.0), the regressor's ``alpha`` ``Ridge``'s (default 1.0) and the Poisson regressor's
``alpha`` ``PoissonRegressor``'s (default 1.0). Each minimizes exactly its counterpart's
objective, as the learner's ``l2=λ`` (the mean loss plus ``λ/2·‖coef‖²``, intercepts not
penalized) with, for ``S`` the sum of the sample weights (the row count without them):

- classifier: ``C·Σ s_i ℓ_i + ½‖coef‖²`` is ``C·S`` times the learner's objective with
  ``λ = 1/(C·S)``; softmax penalizes the ``K−1`` coefficient rows of our parameterization
  (class 0 is the reference), not the ``K`` rows of scikit-learn's symmetric multinomial
  one, so its optimum differs from ``LogisticRegression``'s for ``K > 2``;
- regressor: ``Σ s_i (y_i − x_i·coef − b)² + alpha‖coef‖²`` is ``2S`` times the
  learner's ``½``-squared-loss objective with ``λ = alpha/S``;
- Poisson regressor: ``1/(2S) Σ s_i dev_i + alpha/2‖coef‖²`` is the learner's Poisson
  objective plus a constant with ``λ = alpha``.

``C=np.inf`` or ``alpha=0`` fit the unpenalized optimum. ``partial_fit`` steps without
the penalty (the sample count that sets λ is not known while streaming).

``fit`` on in-memory data streams one pass, then runs Fisher scoring passes on the whole
data until the Newton-decrement rule ``½∇Jᵀ G⁻¹ ∇J ≤ tol·|J|`` holds (``converged_``;
also true when the decrement is at most ``tol``, where separable data drive ``J`` and the
gradient to 0 together, and for the classifier when the mean loss is at most ``tol``:
separated classes, whose unpenalized optimum lies at infinity) or ``max_iter`` passes are
done (``n_iter_``).
``fit`` also takes the path of a Zarr group (or an opened group) for data larger than
memory: ``fit("data.zarr")`` reads the arrays ``"X"`` and ``"y"``;
``fit(path, "labels", "weights")`` names other arrays.
``partial_fit`` takes one natural-gradient step per call (push-style streaming).

``warm_start=True`` (all three): ``fit`` starts from the previous fit's θ (``coef_``,
``intercept_``) and skips the streaming first pass (whose steps would wander off a good
start), running the converging passes from there. The penalized objective has one
minimum, so the result is the cold fit's to the stopping rule; what changes is the cost:
a refit after a small change of ``C``/``alpha`` or of the data takes fewer passes, and one
at the optimum takes one (the pass that checks the rule). ``n_iter_`` counts this fit's
passes. (With ``refine="stream"`` the passes are streaming steps whose harmonic sizes
start again at 1, so a warm start gains little.) The classifier's ``class_weight`` (a
dict or ``"balanced"``) multiplies ``sample_weight`` as in ``LogisticRegression``, so
``S`` (and λ) include it.

The estimator parameters are the learner options of
:data:`natgrad_stream.training.options.OPTIONS` that make sense for an estimator, with the
table's defaults, under the same names (``tol`` is ``--tol``; ``max_iter``, scikit-learn's
name for the cap on passes, is ``epochs``; ``C`` and ``alpha`` set ``l2`` as above).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import d2_tweedie_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from natgrad_stream.errors import NumericalError
from natgrad_stream.training import options as opts
from natgrad_stream.training.callbacks import FIT_END, FIT_START, fit_logger

__all__ = ["NaturalGradientClassifier", "NaturalGradientPoissonRegressor",
           "NaturalGradientRegressor", "ESTIMATOR_OPTIONS"]

#: Learner options exposed as estimator parameters, under the same names (``tol`` and
#: ``max_iter``, the ``epochs`` cap, are handled separately).
ESTIMATOR_OPTIONS = ("optimizer", "metric", "structure", "whitening", "damping", "floor",
                     "batch_size", "seed", "refine", "rank")
_D = {name: opts.BY_NAME[name].default for name in ESTIMATOR_OPTIONS}
#: The table's ``tol`` defaults to None (run every pass); an estimator is meant
#: to stop at the optimum, so ``tol`` has a default of its own.
DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITER = 50
#: Penalty defaults: scikit-learn's (``LogisticRegression(C=1.0)``, ``Ridge(alpha=1.0)``,
#: ``PoissonRegressor(alpha=1.0)``), so that an estimator swapped in fits the same model.
DEFAULT_C = 1.0
DEFAULT_ALPHA = 1.0
_FLOATS = (np.float64, np.float32)
#: Fitted estimators with at most this many parameters get their inference summary
#: (``summary_``, ``bse_``, ...) at the end of ``fit``: one more pass over the data, and
#: two P × P covariances kept in the estimator (16 MB at this bound).
SUMMARY_MAX_PARAMS = 1000
_SUMMARY_ATTRIBUTES = ("summary_", "bse_", "bse_robust_", "pvalues_", "param_names_")
#: Sparse formats accepted as they are (others are converted to the first, CSR); the
#: learner reads them through CSR kernels without densifying.
_SPARSE = ("csr", "csc", "coo")


class _DropFitEnds(logging.Filter):
    def filter(self, record) -> bool:
        return getattr(record, "natgrad_event", None) not in (FIT_START, FIT_END)


@contextlib.contextmanager
def _fit_lines_dropped():
    """Within the block, the learner's start and end lines are not logged: an estimator
    runs the learner one pass at a time and logs its own start and end, with the passes'
    lines between them.
    """
    drop = _DropFitEnds()
    fit_logger.addFilter(drop)
    try:
        yield
    finally:
        fit_logger.removeFilter(drop)


def _is_path(X) -> bool:
    """True for data ``fit`` reads through the learner: a path (a Zarr group, a Parquet
    file or directory, a CSV or ``.npy`` file), an opened Zarr group, or a table object
    (a pyarrow ``Table`` or ``Dataset``, a HuggingFace ``Dataset``).
    """
    from natgrad_stream.data.tables import is_table_object

    if isinstance(X, (str, os.PathLike)) or is_table_object(X):
        return True
    return type(X).__module__.startswith("zarr")


def _weight_sum(source) -> float:
    """Σ of a streamed source's sample weights (its row count without them), read chunk by
    chunk.
    """
    n = int(source.n_rows)
    if source.w is None:
        return float(n)
    step = max(int(source.chunk_rows), 1)
    return float(sum(np.sum(np.asarray(source.w[a:min(a + step, n)], dtype=np.float64))
                     for a in range(0, n, step)))


def _penalty_parameter(name: str, value, *, positive: bool) -> float:
    """``C`` (> 0, ``np.inf`` allowed) or ``alpha`` (>= 0, finite) as a float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = v > 0 if positive else (v >= 0 and np.isfinite(v))
    if not ok or np.isnan(v):
        raise ValueError(f"{name} must be {'> 0' if positive else 'a finite number >= 0'}, "
                         f"got {value!r}")
    return v


class _NaturalGradientBase(BaseEstimator):
    """Shared parameters and fitting; subclasses set the model and the predictions."""

    def __init__(self, *, optimizer=_D["optimizer"], metric=_D["metric"],
                 structure=_D["structure"], whitening=_D["whitening"], damping=_D["damping"],
                 floor=_D["floor"], batch_size=_D["batch_size"], seed=_D["seed"],
                 refine=_D["refine"], rank=_D["rank"], tol=DEFAULT_TOL,
                 max_iter=DEFAULT_MAX_ITER,
                 warm_start=False):
        self.optimizer = optimizer
        self.metric = metric
        self.structure = structure
        self.whitening = whitening
        self.damping = damping
        self.floor = floor
        self.batch_size = batch_size
        self.seed = seed
        self.refine = refine
        self.rank = rank
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    # -- subclass hooks -------------------------------------------------------------------
    _model_name = "linear"

    def _make_model(self, n_features: int):
        from natgrad_stream.models import make_model
        return make_model(self._model_name, n_features)

    def _encode_y(self, y, *, classes=None, partial=False):
        """Targets as the learner's float64 labels (and set any target attributes)."""
        return np.asarray(y, dtype=np.float64)

    def _set_params_from_theta(self, model, theta):
        theta = np.asarray(theta, dtype=np.float64)
        self.coef_ = theta[:-1].copy()
        self.intercept_ = float(theta[-1])

    # -- learner --------------------------------------------------------------------------
    def _learner_options(self) -> dict:
        if self.optimizer not in opts.STREAMING_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(opts.STREAMING_OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        out = {name: getattr(self, name) for name in ESTIMATOR_OPTIONS}
        out["tol"] = self.tol
        out["blas_threads"] = None  # leave the caller's BLAS pools alone
        return out

    def _l2(self, weight_sum: float | None) -> float:
        """The learner's ``l2`` λ for data of total sample weight ``weight_sum`` (None:
        unknown, as in ``partial_fit``: no penalty). Subclasses map ``C`` or ``alpha``.
        """
        return 0.0

    def _new_learner(self, model, weight_sum: float | None = None):
        from natgrad_stream.learner import NaturalGradientLearner
        try:
            return NaturalGradientLearner(model, **self._learner_options(),
                                          l2=self._l2(weight_sum))
        except (TypeError, opts.OptionError) as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from exc

    def _run(self, action):
        """Run ``action()`` on the learner, collecting its diagnostics.

        The learner reports degenerate data with RuntimeWarnings on the way (a singular
        metric that cannot be re-whitened, predictions saturated on perfectly separable
        data, a divergence rollback) and recovers from them. They are collected here and,
        when the fit does not end converged, re-issued as one ConvergenceWarning; a fit
        that does converge dropped them as resolved. A step that leaves the model's domain
        or gives non-finite values raises ``ValueError``. The learner's 'stopped by the pass
        cap' line after each pass is dropped: the estimator warns once, at the end.
        """
        from natgrad_stream.training.learner import pass_cap_notes_dropped

        with warnings.catch_warnings(record=True) as caught, pass_cap_notes_dropped(), \
                _fit_lines_dropped():
            warnings.simplefilter("always", RuntimeWarning)
            try:
                action()
            except NumericalError as exc:
                raise ValueError(f"{type(self).__name__}: the fit failed numerically "
                                 f"({exc})") from exc
        notes = []
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                notes.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return notes

    def _fit_learner(self, data, n_features, weight_sum, *, x="X", y="y", w=None):
        try:
            max_iter = opts.BY_NAME["epochs"].check_value("max_iter", self.max_iter)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        t0 = time.perf_counter()
        model = self._make_model(n_features)
        learner = self._new_learner(model, weight_sum)
        skipped = self._warm_start_from(learner)  # passes a warm start does not make

        def passes():
            # one pass per call (a learner continues up to ``epochs``, exactly as in one
            # call), so the estimator's own stopping rule is checked after every pass
            for k in range(1 + skipped, max_iter + 1 + skipped):
                learner.fit(data, epochs=k, x=x, y=y, w=w)
                if k > 1 and self._converged(learner):
                    return

        fit_logger.info("%s: fitting %d features%s, at most %d passes (tol %g)",
                        type(self).__name__, n_features,
                        " from the previous fit (warm start)" if skipped else "", max_iter,
                        self.tol)
        notes = self._run(passes)
        self._finish(learner, model)
        self.n_iter_ = int(learner.result.epochs) - skipped
        self.converged_ = self._converged(learner)
        self._infer(learner, data, x=x, y=y, w=w)
        fit_logger.info("%s: %s in %d passes, %s samples read, %.2f s", type(self).__name__,
                        "converged" if self.converged_ else "not converged", self.n_iter_,
                        f"{learner.state.samples:,}", time.perf_counter() - t0)
        note = learner.unidentified_note()
        if note is not None:  # the learner's own line is dropped with the per-pass ones
            warnings.warn(f"{type(self).__name__}: {note}", UserWarning, stacklevel=3)
        if not self.converged_ and max_iter > 1:
            detail = f" ({'; '.join(dict.fromkeys(notes))})" if notes else ""
            warnings.warn(f"{type(self).__name__} did not converge in max_iter={max_iter} "
                          f"passes (tol={self.tol}){detail}; increase max_iter, or the data "
                          "may be separable or degenerate", ConvergenceWarning, stacklevel=3)
        return self

    def _warm_start_from(self, learner) -> int:
        """With ``warm_start`` and a previous fit, start ``learner`` at its θ and skip the
        streaming first pass, whose steps would wander off a good start (the later passes
        converge from it); returns the passes skipped (1, else 0).
        """
        previous = getattr(self, "learner_", None)
        if not self.warm_start or previous is None:
            return 0
        if previous.model.config() != learner.model.config():
            raise ValueError(f"{type(self).__name__}(warm_start=True): the previous fit's "
                             f"model {previous.model.config()} does not match this data's "
                             f"{learner.model.config()} (other features or classes); "
                             "fit with warm_start=False")
        from natgrad_stream.data import Cursor
        learner.reset(np.array(previous.theta, dtype=np.float64))
        learner.state.cursor = Cursor(epoch=1)
        return 1

    def _infer(self, learner, data, *, x, y, w) -> None:
        """Set ``summary_``, ``bse_``, ``bse_robust_``, ``pvalues_`` and
        ``param_names_`` from one more pass over ``data`` at the fitted θ
        (:mod:`natgrad_stream.inference`); when the model has more than
        :data:`SUMMARY_MAX_PARAMS` parameters or the information is singular, none is set
        and :meth:`summary` says why.
        """
        from natgrad_stream.inference import summary
        self._forget_summary()
        model = learner.model
        if model.n_params > SUMMARY_MAX_PARAMS:
            self._summary_error = (f"{model.n_params:,} parameters: the summary is computed "
                                   f"at fit for at most {SUMMARY_MAX_PARAMS:,} (natgrad_stream"
                                   ".inference.summary computes it for more)")
            return
        names = getattr(self, "feature_names_in_", None)
        classes = getattr(self, "classes_", None) if model.name == "softmax" else None
        try:
            result = summary(model, learner.theta, data, x=x, y=y, w=w, l2=learner.penalty.lam,
                             converged=bool(self.converged_), feature_names=names,
                             class_names=classes)
        except (ValueError, ArithmeticError) as exc:
            self._summary_error = str(exc)
            return
        self._summary_error = None
        self.summary_ = result
        self.bse_ = result.bse
        self.bse_robust_ = result.bse_robust
        self.pvalues_ = result.columns(False)["p"]
        self.param_names_ = np.asarray(result.names, dtype=object)

    def _forget_summary(self) -> None:
        for attr in _SUMMARY_ATTRIBUTES:
            if hasattr(self, attr):
                delattr(self, attr)

    def summary(self, *, alpha: float = 0.05, cov: str = "model"):
        """The inference summary of the fit (``print`` it for statsmodels' table; its
        ``to_dict()`` is ``natgrad-stream summary --format json``), at level 1 − ``alpha``
        with the ``cov`` covariance ("model" or "robust", HC0). With the estimator's
        default penalty (``C``, ``alpha``) the covariances are the penalized estimator's
        sandwich (see :mod:`natgrad_stream.inference.statistics`).

        Raises
        ------
        ValueError
            When ``fit`` could not compute it (the reason), or after ``partial_fit``.
        """
        check_is_fitted(self)
        if not hasattr(self, "summary_"):
            why = getattr(self, "_summary_error", None) or \
                "partial_fit does not compute it (fit does)"
            raise ValueError(f"{type(self).__name__}: no inference summary: {why}")
        return self.summary_.with_options(alpha=alpha, cov=cov)

    def _converged(self, learner) -> bool:
        """The learner's rule, or an absolute one: the learner's is relative to ``|J|``,
        and on separable data ``J`` and the gradient vanish together (the decrement of the
        last accepted pass at most ``tol``, as sklearn's gradient tolerances).
        """
        s = learner.state
        return bool(learner.result.converged or s.decrement <= self.tol
                    or self._separated(s.train_loss))

    def _separated(self, loss: float) -> bool:
        """Whether the mean loss is at its infimum 0 (classifier: separated data)."""
        return False

    def _finish(self, learner, model):
        self.learner_ = learner
        self._set_params_from_theta(model, learner.theta)

    # -- public API -----------------------------------------------------------------------
    def fit(self, X, y=None, sample_weight=None):
        """Fit to convergence (at most ``max_iter`` passes).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features), a Zarr path
            or group, or a table (a Parquet, CSV or ``.npy`` path, a pyarrow ``Table``
            or ``Dataset``, a HuggingFace ``Dataset``)
            Features; SciPy sparse input (CSR, CSC, COO) is read by the sparse kernels
            without densifying; a path (or group) is streamed from disk chunk by chunk;
            a table's features are every column but the targets' and weights'.
        y : array-like of shape (n_samples,), or with a path or table the targets array's
            or column's name (default ``"y"``).
        sample_weight : array-like of shape (n_samples,), optional
            With a path: the weights array's name, or None.

        Returns
        -------
        self
        """
        if _is_path(X):
            return self._fit_path(X, "y" if y is None else y, sample_weight)
        X, y = validate_data(self, X, y, accept_sparse=_SPARSE, dtype=_FLOATS, order="C",
                             **self._y_check())
        labels, y = y, self._encode_y(y)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        w = self._weighted(labels, y, w, partial=False)
        weight_sum = float(X.shape[0] if w is None else np.sum(w))
        return self._fit_learner((X, y) if w is None else (X, y, w), X.shape[1], weight_sum)

    def _y_check(self) -> dict:
        return {"y_numeric": True}

    def _weighted(self, labels, y, w, *, partial: bool):
        """The sample weights of a fit (shape (n_samples,) or None) with any weights of the
        estimator's own folded in (classifier: ``class_weight``).
        """
        return w

    def _fit_path(self, data, y_name, w_name):
        from natgrad_stream.data import as_source
        if not isinstance(y_name, str) or not (w_name is None or isinstance(w_name, str)):
            raise TypeError("with a Zarr path, y and sample_weight name arrays (strings)")
        source = as_source(data, x="X", y=y_name, w=w_name)
        for attr in ("feature_names_in_",):
            if hasattr(self, attr):
                delattr(self, attr)
        self.n_features_in_ = int(source.n_features)
        self._prepare_path(source)
        return self._fit_learner(data, self.n_features_in_, _weight_sum(source), x="X",
                                 y=y_name, w=w_name)

    def _prepare_path(self, source) -> None:
        """Set target attributes from a streamed source (classifier: the classes)."""

    def partial_fit(self, X, y, sample_weight=None):
        """One natural-gradient step on the batch ``(X, y)``.

        Returns
        -------
        self
        """
        first = not hasattr(self, "learner_")
        X, y = validate_data(self, X, y, accept_sparse=_SPARSE, dtype=_FLOATS, order="C",
                             reset=first, **self._y_check())
        return self._partial_step(X, y, sample_weight, first, classes=None)

    def _partial_step(self, X, y, sample_weight, first, classes):
        labels, y = y, self._encode_y(y, classes=classes, partial=True)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        w = self._weighted(labels, y, w, partial=True)
        if first:
            model = self._make_model(X.shape[1])
            learner = self._new_learner(model)
            self.n_iter_ = 0
            self.converged_ = False
        else:
            learner = self.learner_
            model = learner.model
        self._forget_summary()  # a fit's summary no longer describes the steps
        self._run(lambda: learner.step(X, y, w))
        self._finish(learner, model)
        self.n_iter_ += 1
        return self

    def _linear(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=_SPARSE, dtype=_FLOATS, reset=False)
        return X @ self.coef_.T + self.intercept_

    def to_sklearn(self):
        """The fitted scikit-learn estimator that predicts as this one (equal to round-off):
        ``LogisticRegression`` (``C``) for the classifier, ``Ridge`` (``alpha``; with
        ``alpha=0`` ``LinearRegression``) and ``PoissonRegressor`` (``alpha``) for the
        regressors (:func:`natgrad_stream.sklearn_equivalent.to_sklearn`).
        """
        from natgrad_stream.sklearn_equivalent import to_sklearn

        check_is_fitted(self)
        return to_sklearn(self.learner_.model, self.learner_.theta,
                          classes=getattr(self, "classes_", None),
                          hyperparameters=self._sklearn_hyperparameters(),
                          feature_names=getattr(self, "feature_names_in_", None))

    def _sklearn_hyperparameters(self) -> dict:
        return {}

    # skl2onnx calls these when it meets the estimator (``skl2onnx.to_onnx(estimator, X)``):
    # the graph is that of the equivalent scikit-learn estimator (natgrad_stream.onnx_export)
    def onnx_shape_calculator(self):
        """skl2onnx's shape calculator for this estimator (that of :meth:`to_sklearn`'s)."""
        from natgrad_stream.onnx_export import delegate

        return delegate(self, "shape_calculator")

    def onnx_converter(self):
        """skl2onnx's converter for this estimator (that of :meth:`to_sklearn`'s)."""
        from natgrad_stream.onnx_export import delegate

        return delegate(self, "converter")

    def _expected_failed_checks(self) -> dict:
        """Estimator checks expected to fail, with the reason (sklearn >= 1.6 dropped the
        ``_xfail_checks`` tag; pass this to ``parametrize_with_checks(...,
        expected_failed_checks=...)``): none. (Unpenalized, the weight-equivalence check's
        15 rows × 30 features had no unique optimum; the default penalty gives it one.).
        """
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = False
        tags.target_tags.single_output = True
        return tags


class _AlphaRegressor(RegressorMixin, _NaturalGradientBase):
    """A regressor penalized by ``alpha`` (see the subclasses for its meaning)."""

    def __init__(self, *, alpha=DEFAULT_ALPHA, optimizer=_D["optimizer"], metric=_D["metric"],
                 structure=_D["structure"], whitening=_D["whitening"], damping=_D["damping"],
                 floor=_D["floor"], batch_size=_D["batch_size"], seed=_D["seed"],
                 refine=_D["refine"], rank=_D["rank"], tol=DEFAULT_TOL,
                 max_iter=DEFAULT_MAX_ITER,
                 warm_start=False):
        self.alpha = alpha
        super().__init__(optimizer=optimizer, metric=metric, structure=structure,
                         whitening=whitening, damping=damping, floor=floor,
                         batch_size=batch_size, seed=seed, refine=refine, rank=rank,
                         tol=tol, max_iter=max_iter, warm_start=warm_start)


class NaturalGradientRegressor(_AlphaRegressor):
    """Least-squares linear regression fitted by natural-gradient learning, penalized as
    ``Ridge``: it minimizes ``Σ s_i (y_i − x_i·coef − b)² + alpha·‖coef‖²`` (the learner's
    ``l2 = alpha/S``, ``S = Σ s_i``).

    Parameters
    ----------
    alpha : float, default 1.0
        ``Ridge``'s ``alpha`` and default (so the estimator swaps in for ``Ridge()``; the
        penalty's weight in the mean loss, ``alpha/S``, vanishes as the data grow);
        ``alpha=0`` is ordinary least squares, as ``LinearRegression``.
    optimizer : {"sgd", "momentum", "adam"}
        Optimizer of the first (streaming) pass; later passes are Fisher scoring
        (``refine="scoring"``).
    metric, structure, whitening, damping, floor, batch_size, seed, refine, rank
        The learner options of the same names (see ``natgrad-stream fit --help``;
        ``rank``: the columns of ``structure="lowrank"``'s sketch).
    tol : float
        Stop once the Newton decrement of a whole pass is at most ``tol·|J|``.
    max_iter : int
        Passes over the data at most (the first streams, the others are Fisher scoring).
    warm_start : bool, default False
        Start ``fit`` from the previous fit's coefficients, skipping the streaming first
        pass (the same optimum, fewer passes when the start is near it; see the module
        docstring); the data must have the previous fit's features (and classes).

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    n_iter_ : int
        Passes used (``fit``) or steps taken (``partial_fit``).
    converged_ : bool
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        When ``X`` had string column names.
    learner_ : NaturalGradientLearner
    summary_ : Summary
        Statistical inference at the fitted parameters (``fit`` only; at most
        ``SUMMARY_MAX_PARAMS`` parameters): see :meth:`summary`.
    bse_, bse_robust_, pvalues_ : ndarray of shape (n_params,)
        Model-based and robust (HC0) standard errors and the model-based p-values, in the
        order of ``param_names_`` (coefficients, then the intercept; the classifier's
        softmax: one such block per non-reference class).
    param_names_ : ndarray of str, shape (n_params,)
    """

    _model_name = "linear"

    def _l2(self, weight_sum):
        alpha = _penalty_parameter("alpha", self.alpha, positive=False)
        return 0.0 if weight_sum is None or alpha == 0 else alpha / weight_sum

    def predict(self, X):
        """Predicted targets, shape (n_samples,)."""
        return self._linear(X)

    def _sklearn_hyperparameters(self) -> dict:
        alpha = _penalty_parameter("alpha", self.alpha, positive=False)
        return {"estimator": "Ridge", "alpha": alpha} if alpha > 0 else {}


class NaturalGradientPoissonRegressor(_AlphaRegressor):
    """Poisson regression with a log link (``E[y|x] = exp(x·coef + intercept)``), penalized
    as ``PoissonRegressor``: it minimizes ``1/(2S) Σ s_i dev_i + alpha/2·‖coef‖²`` (the
    learner's ``l2 = alpha``).

    With an exposure (time at risk, population, …) per row, pass the *rate*
    ``y / exposure`` as the target and the exposure as ``sample_weight``: the weighted
    Poisson likelihood of the rates has the same optimum as the counts with an
    ``log(exposure)`` offset. ``predict`` then returns rates.

    Parameters and attributes are those of :class:`NaturalGradientRegressor`, with
    ``alpha`` (default 1.0) ``PoissonRegressor``'s (``alpha=0``: the maximum-likelihood
    fit); ``score`` is the fraction of Poisson deviance explained (D², as sklearn's
    ``PoissonRegressor``).
    """

    _model_name = "poisson"

    def _l2(self, weight_sum):
        alpha = _penalty_parameter("alpha", self.alpha, positive=False)
        return 0.0 if weight_sum is None else alpha

    def _encode_y(self, y, *, classes=None, partial=False):
        y = np.asarray(y, dtype=np.float64)
        if np.any(y < 0):
            raise ValueError("Poisson targets y must be >= 0 (counts or rates)")
        return y

    def predict(self, X):
        """Predicted means (rates), shape (n_samples,)."""
        return np.exp(self._linear(X))

    def _sklearn_hyperparameters(self) -> dict:
        return {"alpha": _penalty_parameter("alpha", self.alpha, positive=False)}

    def score(self, X, y, sample_weight=None):
        """D²: the fraction of Poisson deviance explained."""
        return d2_tweedie_score(y, self.predict(X), sample_weight=sample_weight, power=1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags


class NaturalGradientClassifier(ClassifierMixin, _NaturalGradientBase):
    """Logistic (two classes) or softmax (more) regression by natural-gradient learning.

    Labels of any type are mapped to ``0 … K−1`` through ``classes_`` (sorted). With a Zarr
    path, the targets must already be the integer codes ``0 … K−1``; ``classes_`` are the
    codes found.

    Parameters
    ----------
    C : float, default 1.0
        ``LogisticRegression``'s inverse penalty and default: the fit minimizes
        ``C·Σ s_i ℓ_i + ½‖coef‖²`` (the learner's ``l2 = 1/(C·S)``, ``S = Σ s_i``), as
        ``LogisticRegression(C=C)`` for two classes; ``C=np.inf`` is the unpenalized fit.
        Softmax (K > 2) penalizes the K−1 rows of the reference-class parameterization.
    optimizer, metric, structure, whitening, damping, floor, batch_size, seed, refine, \
rank, tol, max_iter, warm_start
        As in :class:`NaturalGradientRegressor`.
    class_weight : dict, "balanced" or None, default None
        ``LogisticRegression``'s: each row's sample weight is multiplied by its class's
        weight, a dict ``{label: weight}`` or ``"balanced"``,
        ``n_samples / (n_classes · bincount(y))`` (the counts weighted by
        ``sample_weight`` when given). In-memory data only (with a Zarr path, store the
        weights as an array); ``partial_fit`` takes a dict only, as ``SGDClassifier``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) for two classes, else (n_classes, n_features)
        Softmax: class 0 is the reference class, its row zeros.
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_, converged_, n_features_in_, feature_names_in_, learner_
        As in :class:`NaturalGradientRegressor`.
    summary_, bse_, bse_robust_, pvalues_, param_names_
        As in :class:`NaturalGradientRegressor` (softmax: coefficient names such as
        ``x3[class b]``, for each class but the reference ``classes_[0]``).
    """

    def __init__(self, *, C=DEFAULT_C, optimizer=_D["optimizer"], metric=_D["metric"],
                 structure=_D["structure"], whitening=_D["whitening"], damping=_D["damping"],
                 floor=_D["floor"], batch_size=_D["batch_size"], seed=_D["seed"],
                 refine=_D["refine"], rank=_D["rank"], tol=DEFAULT_TOL,
                 max_iter=DEFAULT_MAX_ITER,
                 warm_start=False, class_weight=None):
        self.C = C
        self.class_weight = class_weight
        super().__init__(optimizer=optimizer, metric=metric, structure=structure,
                         whitening=whitening, damping=damping, floor=floor,
                         batch_size=batch_size, seed=seed, refine=refine, rank=rank,
                         tol=tol, max_iter=max_iter, warm_start=warm_start)

    def _l2(self, weight_sum):
        C = _penalty_parameter("C", self.C, positive=True)
        return 0.0 if weight_sum is None or np.isinf(C) else 1.0 / (C * weight_sum)

    def _y_check(self) -> dict:
        return {}

    def _sklearn_hyperparameters(self) -> dict:
        return {"C": _penalty_parameter("C", self.C, positive=True)}

    def _make_model(self, n_features: int):
        from natgrad_stream.models import make_model
        K = len(self.classes_)
        if K == 2:
            return make_model("logistic", n_features)
        return make_model("softmax", n_features, n_classes=K)

    def _encode_y(self, y, *, classes=None, partial=False):
        check_classification_targets(y)
        y = np.asarray(y)
        if partial and hasattr(self, "classes_") and classes is None:
            classes = self.classes_
        if classes is None:
            self.classes_ = np.unique(y)
        else:
            classes = np.unique(np.asarray(classes))
            if hasattr(self, "classes_") and not np.array_equal(classes, self.classes_):
                raise ValueError(f"classes={classes} differs from the classes of the first "
                                 f"partial_fit call, {self.classes_}")
            self.classes_ = classes
        if len(self.classes_) < 2:
            raise ValueError("the classifier needs samples of at least 2 classes in the "
                             f"data, got one class: {self.classes_[0]!r}")
        code = np.searchsorted(self.classes_, y)
        code = np.minimum(code, len(self.classes_) - 1)
        unknown = self.classes_[code] != y
        if np.any(unknown):
            raise ValueError(f"y contains labels not in classes: {np.unique(y[unknown])}")
        return code.astype(np.float64)

    def _weighted(self, labels, y, w, *, partial: bool):
        """``class_weight`` as scikit-learn applies it: the weight of each row's class
        (``"balanced"``: ``n_samples / (n_classes · bincount(y))``, the counts weighted by
        ``sample_weight`` when given) multiplies ``sample_weight``.
        """
        cw = self.class_weight
        if cw is None:
            return w
        if not (isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(f"class_weight must be a dict, 'balanced' or None, got {cw!r}")
        if partial and isinstance(cw, str):
            raise ValueError("class_weight='balanced' needs every label at once: it is not "
                             "supported by partial_fit (compute the weights with "
                             "sklearn.utils.class_weight.compute_class_weight on all "
                             "labels and pass them as a dict)")
        from sklearn.utils.class_weight import compute_class_weight
        weights = compute_class_weight(cw, classes=self.classes_, y=np.asarray(labels),
                                       sample_weight=w if isinstance(cw, str) else None)
        per_row = np.asarray(weights, dtype=np.float64)[y.astype(np.intp)]
        return per_row if w is None else w * per_row

    def _separated(self, loss: float) -> bool:
        # −log-likelihoods of labels are >= 0; at most tol: the classes are separated, the
        # optimum is at infinity and the predictions cannot improve
        return bool(loss <= self.tol)

    def _prepare_path(self, source) -> None:
        if self.class_weight is not None:
            raise ValueError("class_weight applies to in-memory data; with a path (a Zarr "
                             "store or a table), store the weighted sample weights as an "
                             "array or column and name it with sample_weight")
        n, step = int(source.n_rows), max(int(source.chunk_rows), 1)
        found = set()
        for a in range(0, n, step):
            found.update(np.unique(np.asarray(source.y[a:min(a + step, n)])).tolist())
        codes = np.array(sorted(found))
        if len(codes) < 2 or not np.array_equal(codes, np.arange(len(codes))):
            raise ValueError("with a Zarr path the labels must be the integer codes 0 … K−1 "
                             f"(K >= 2); found {codes[:10]}")
        self.classes_ = codes.astype(np.int64)

    def _set_params_from_theta(self, model, theta):
        theta = np.asarray(theta, dtype=np.float64)
        if len(self.classes_) == 2:
            self.coef_ = theta[None, :-1].copy()
            self.intercept_ = theta[-1:].copy()
        else:
            self.coef_, self.intercept_ = model.coef_intercept(theta)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One natural-gradient step on ``(X, y)``; ``classes`` (all labels) is required
        on the first call.

        Returns
        -------
        self
        """
        first = not hasattr(self, "learner_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        X, y = validate_data(self, X, y, accept_sparse=_SPARSE, dtype=_FLOATS, order="C",
                             reset=first)
        return self._partial_step(X, y, sample_weight, first, classes=classes)

    def decision_function(self, X):
        """Log-odds of class 1, shape (n_samples,); softmax: logits, (n_samples, K)."""
        z = self._linear(X)
        return z[:, 0] if len(self.classes_) == 2 else z

    def predict(self, X):
        """Predicted class labels."""
        z = self.decision_function(X)
        idx = (z > 0).astype(int) if z.ndim == 1 else np.argmax(z, axis=1)
        return self.classes_[idx]

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns as ``classes_``."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p = expit(z)
            return np.column_stack([1.0 - p, p])
        return softmax(z, axis=1)

    def predict_log_proba(self, X):
        """Log class probabilities, shape (n_samples, n_classes)."""
        z = self.decision_function(X)
        if z.ndim == 1:
            return np.column_stack([log_expit(-z), log_expit(z)])
        return log_softmax(z, axis=1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        return tags
