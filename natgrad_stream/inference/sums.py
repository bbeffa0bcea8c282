"""The one streamed pass of statistical inference: mergeable sums at a fixed θ.

Everything ``summary`` reports is a function of sums over rows at θ: the loss, the model
Fisher information (the Hessian of the negative log-likelihood for the canonical-link
GLMs and softmax), the outer product of the per-row scores (the "meat" of the sandwich
covariance), the gradient (how far θ is from the optimum of these rows) and, for Poisson,
the ``log y!`` and ``y log y`` terms of the log-likelihood and deviance. Sums of disjoint
rows add, so a pass over chunks, a Dask reduction tree or two stores merge by ``+``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, xlogy

from natgrad_stream._constants import EVAL_BATCH_ROWS
from natgrad_stream.errors import DataError

#: Bytes the pass may take for its P × P sums and kernel workspaces (two accumulators,
#: two batch buffers): a model with more parameters is refused with the figure.
INFERENCE_MAX_METRIC_BYTES = 4 << 30


@dataclass
class InferenceSums:
    """Sums over a set of rows at one θ (every term weighted by the sample weight ``w``).

    Attributes
    ----------
    rows : int
    weight : float
        Σ w (the row count without weights).
    loss : float
        Σ w ℓ, the model's loss (the negative log-likelihood up to the constants below).
    grad : ndarray, shape (P,)
        Σ w ∇θ ℓ.
    fisher : ndarray, shape (P, P)
        Σ w of the model Fisher's per-row terms (the Hessian of Σ w ℓ for canonical links).
    meat : ndarray, shape (P, P)
        Σ w sᵢ sᵢᵀ of the per-row scores (the empirical Fisher).
    log_factorial : float
        Σ w log yᵢ! (Poisson's log-likelihood constant; 0 for other models).
    ylogy : float
        Σ w (yᵢ log yᵢ − yᵢ) (Poisson's saturated-model term; 0 for other models).
    """

    rows: int
    weight: float
    loss: float
    grad: np.ndarray
    fisher: np.ndarray
    meat: np.ndarray
    log_factorial: float = 0.0
    ylogy: float = 0.0

    @classmethod
    def zeros(cls, n_params: int) -> InferenceSums:
        """Sums over no rows."""
        P = int(n_params)
        return cls(0, 0.0, 0.0, np.zeros(P), np.zeros((P, P)), np.zeros((P, P)))

    def __add__(self, other: InferenceSums) -> InferenceSums:
        return InferenceSums(self.rows + other.rows, self.weight + other.weight,
                             self.loss + other.loss, self.grad + other.grad,
                             self.fisher + other.fisher, self.meat + other.meat,
                             self.log_factorial + other.log_factorial,
                             self.ylogy + other.ylogy)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what moves between Dask processes)."""
        return 8 * 5 + self.grad.nbytes + self.fisher.nbytes + self.meat.nbytes

    def add_batch(self, model, X, y, w, theta, ws_fisher, ws_meat, *,
                  parallel: bool | None = None) -> None:
        """Add one batch's sums in place (two fused kernel calls on the batch in memory:
        the model metric, then the empirical one; the data are read once). ``parallel``
        forces the kernels' variant (None: by batch size).
        """
        loss, weight = model.accumulate(X, y, w, theta, metric="model", structure="full",
                                        ws=ws_fisher, parallel=parallel)
        model.accumulate(X, y, w, theta, metric="empirical", structure="full", ws=ws_meat,
                         parallel=parallel)
        self.rows += int(X.shape[0])
        self.weight += float(weight)
        self.loss += float(loss)
        self.grad += ws_fisher.grad
        self.fisher += ws_fisher.fisher
        self.meat += ws_meat.fisher
        if model.name == "poisson":
            yv = np.asarray(y, dtype=np.float64)
            wv = 1.0 if w is None else np.asarray(w, dtype=np.float64)
            self.log_factorial += float(np.sum(wv * gammaln(yv + 1.0)))
            self.ylogy += float(np.sum(wv * (xlogy(yv, yv) - yv)))


def check_inference_size(model) -> None:
    """Refuse a model whose P × P sums would take more than
    :data:`INFERENCE_MAX_METRIC_BYTES` (one line with the figures).
    """
    P = model.n_params
    need = 4 * 8 * P * P
    if need > INFERENCE_MAX_METRIC_BYTES:
        raise ValueError(f"model {model.name!r} has {P:,} parameters: the covariance pass "
                         f"would hold {need / 2**30:.1f} GiB of P × P sums (at most "
                         f"{INFERENCE_MAX_METRIC_BYTES >> 30} GiB)")


def stream_sums(model, theta: np.ndarray, source, *, batch_size: int = EVAL_BATCH_ROWS,
                digests=None, progress=None) -> InferenceSums:
    """:class:`InferenceSums` of every row of ``source`` at ``theta``, in one pass in chunk
    order (no shuffle), with the model's data checks and, for a run's training data, its
    content digests (a changed or missing chunk is a :class:`DataError` naming it).
    ``progress(rows)``, if given, is called after each batch.
    """
    check_inference_size(model)
    theta = np.ascontiguousarray(theta, dtype=np.float64)
    sums = InferenceSums.zeros(model.n_params)
    ws_fisher, ws_meat = model.new_workspace("full"), model.new_workspace("full")
    with source.batches(batch_size=batch_size, epochs=1, shuffle=False, digests=digests,
                        **model.data_checks()) as stream:
        for batch in stream:
            sums.add_batch(model, batch.X, batch.y, batch.w, theta, ws_fisher, ws_meat)
            if progress is not None:
                progress(sums.rows)
    if sums.rows == 0:
        raise DataError("no rows: nothing to summarize", array=source.names[0])
    if not sums.weight > 0:
        raise DataError("every sample weight is zero: nothing to summarize",
                        array=source.names[2])
    return sums


def block_sums(spec, model, chunks, theta) -> InferenceSums:
    """A Dask task: the sums over ``chunks`` (consecutive positions of the pass, in order)
    of the store ``spec`` on a worker, one leaf per chunk by the serial kernels, added by
    :func:`~natgrad_stream.distributed.stats.tree_sum` (the result does not depend on
    placement; see :meth:`~natgrad_stream.distributed.DaskBackend.reduce`).
    """
    from natgrad_stream.data.window import chunk_window, locate_in_full_data
    from natgrad_stream.distributed.stats import tree_sum
    from natgrad_stream.distributed.worker import open_source

    source = open_source(spec)
    chunks = np.asarray(chunks, dtype=np.int64)
    order = np.argsort(chunks, kind="stable")
    leaves: list = [None] * len(chunks)
    ws = model.new_workspace("full", n_threads=1), model.new_workspace("full", n_threads=1)
    try:
        with chunk_window(source, chunks[order]).batches(
                batch_size=source.chunk_rows, epochs=1, shuffle=False, chunks_per_read=1,
                prefetch=1, **model.data_checks()) as stream:
            for i, batch in enumerate(stream):
                leaf = InferenceSums.zeros(model.n_params)
                leaf.add_batch(model, batch.X, batch.y, batch.w, theta, *ws, parallel=False)
                leaves[order[i]] = leaf
    except DataError as exc:
        raise locate_in_full_data(exc, chunks[order], source.chunk_rows) from exc
    return tree_sum(leaves)


def dask_sums(client, model, theta: np.ndarray, path, *, x: str, y: str,
              w: str | None) -> InferenceSums:
    """:class:`InferenceSums` of the Zarr store at ``path`` computed on the Dask cluster of
    ``client``: each worker reads its blocks of chunks, the sums merge in the fixed tree.
    """
    import os

    from natgrad_stream.data import open_zarr
    from natgrad_stream.distributed import DaskBackend, DataSpec

    check_inference_size(model)
    if not isinstance(path, str | os.PathLike):
        raise TypeError("a Dask summary reads a Zarr store that every worker opens: pass "
                        f"its path or URL, not {type(path).__name__}")
    path = os.fspath(path)
    if "://" not in path:
        path = os.path.abspath(path)
    source = open_zarr(path, x=x, y=y, w=w)
    if source.n_features != model.n_features:
        raise DataError(f"has {source.n_features} features but the model was fitted on "
                        f"{model.n_features}", array=x)
    spec = DataSpec(path, x=x, y=y, w=w, chunk_rows=source.chunk_rows, n_rows=source.n_rows)
    if source.n_rows == 0:
        raise DataError("no rows: nothing to summarize", array=x)
    sums = DaskBackend(client, spec, model).reduce(block_sums, theta)
    if not sums.weight > 0:
        raise DataError("every sample weight is zero: nothing to summarize", array=w)
    return sums
