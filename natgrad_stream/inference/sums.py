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

from natgrad_stream._blas import limited_blas_threads
from natgrad_stream._constants import EVAL_BATCH_ROWS, WIDE_METRIC_PARAMS
from natgrad_stream._jit import num_threads
from natgrad_stream.data.sparse import is_sparse
from natgrad_stream.errors import DataError
from natgrad_stream.models._gram_kernels import BLOCK_ROWS, symmetrize_from_upper
from natgrad_stream.models.base import as_float64_vector

_EMPTY = np.empty(0)

#: Bytes the pass may take for its P × P sums and batch buffers (two of each; the
#: parallel kernels' per-thread copies come on top, for models below WIDE_METRIC_PARAMS
#: only): a model with more parameters is refused with the figure.
INFERENCE_MAX_METRIC_BYTES = 4 << 30
#: Below this many parameters the pass runs the serial kernels: their two P × P Gram
#: updates are too small to gain from threads (unloaded, 21 against 19 ns a row at
#: d = 10), and the parallel variant competes with the reader's decompression threads for
#: the cores: on the shared 2-core machine (load 5) a 4M × 10 summary ran at 0.4M rows/s
#: with it and 3 to 6.7M rows/s without. From about a hundred parameters the Gram dominates
#: and threads halve it (417 against 217 ns a row at d = 100).
INFERENCE_PARALLEL_MIN_PARAMS = 32
#: From this many parameters on, a dense GLM batch's two P × P Grams are BLAS's ``dsyrk``
#: (one thread each) on blocks of scaled rows instead of the fused kernel's own Gram
#: update. CPU per row of a 65,536-row logistic batch (load 10, 2 cores): P = 11: 42 ns
#: (fused, serial) against 65 (BLAS); P = 21: 84 against 107; P = 33: 820 (fused,
#: parallel) against 214; P = 51: 1,101 against 366; P = 101: 1,958 against 1,027.
INFERENCE_BLAS_MIN_PARAMS = 32
#: Bytes of the two blocks of scaled rows handed to ``dsyrk`` (their rows: this / 16 P,
#: at least INFERENCE_BLAS_MIN_BLOCK_ROWS), whatever the batch size.
INFERENCE_BLAS_BLOCK_BYTES = 8 << 20
INFERENCE_BLAS_MIN_BLOCK_ROWS = 256


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

    def add_batch(self, ws: PassWorkspace, X, y, w, theta) -> None:
        """Add one batch's sums in place, by the workspace's kernels: for dense rows of a
        GLM one fused sweep (:mod:`~natgrad_stream.inference._glm_kernels`), else the
        model's kernel twice on the batch in memory (the model metric, then the empirical
        one); the data are read once either way.
        """
        model = ws.model
        out = ws.glm_batch(X, y, w, theta)
        if out is None:
            loss, weight = model.accumulate(X, y, w, theta, metric="model",
                                            structure="full", ws=ws.fisher_ws,
                                            parallel=ws.parallel)
            model.accumulate(X, y, w, theta, metric="empirical", structure="full",
                             ws=ws.meat_ws, parallel=ws.parallel)
            grad, fisher, meat = ws.fisher_ws.grad, ws.fisher_ws.fisher, ws.meat_ws.fisher
        else:
            loss, weight, grad, fisher, meat = out
        self.rows += int(X.shape[0])
        self.weight += float(weight)
        self.loss += float(loss)
        self.grad += grad
        self.fisher += fisher
        self.meat += meat
        if model.name == "poisson":
            yv = np.asarray(y, dtype=np.float64)
            wv = 1.0 if w is None else np.asarray(w, dtype=np.float64)
            self.log_factorial += float(np.sum(wv * gammaln(yv + 1.0)))
            self.ylogy += float(np.sum(wv * (xlogy(yv, yv) - yv)))


class PassWorkspace:
    """The buffers of the inference pass for ``model``, allocated at first use: the fused
    GLM kernel's or, from :data:`INFERENCE_BLAS_MIN_PARAMS` parameters, the blocks of
    scaled rows for BLAS (dense GLM batches), or two of the model's full-metric
    workspaces (sparse batches, softmax). :meth:`close` stops the thread of the second
    Gram, if one was started.

    ``parallel``: False for the serial kernels, None to let the batch size decide (the
    default: serial below :data:`INFERENCE_PARALLEL_MIN_PARAMS` parameters and for wide
    models, whose per-thread P × P copies would dominate memory).
    """

    def __init__(self, model, *, parallel: bool | None = None, n_threads: int | None = None):
        self.model = model
        P = model.n_params
        if parallel is None and (P < INFERENCE_PARALLEL_MIN_PARAMS or P >= WIDE_METRIC_PARAMS):
            parallel = False
        self.parallel = parallel
        self.n_threads = num_threads() if n_threads is None else int(n_threads)
        self._glm = None
        self._blas = None
        self._executor = None
        self._ws = None

    @property
    def fisher_ws(self):
        """The model's workspace for the model metric."""
        return self._model_workspaces()[0]

    @property
    def meat_ws(self):
        """The model's workspace for the empirical metric."""
        return self._model_workspaces()[1]

    def _model_workspaces(self):
        if self._ws is None:
            self._ws = tuple(self.model.new_workspace("full", n_threads=self.n_threads)
                             for _ in range(2))
        return self._ws

    def glm_batch(self, X, y, w, theta):
        """``(loss, weight, grad, fisher, meat)`` of a dense batch of a GLM by the fused
        kernel or, for wider models, BLAS (views of this workspace's buffers), or None for
        other batches and models.
        """
        model = self.model
        if getattr(model, "family", None) is None or model.family < 0 or is_sparse(X):
            return None
        from natgrad_stream.inference import _glm_kernels as K

        X = model.check_X(X)
        n, P = X.shape[0], model.n_params
        y = as_float64_vector(y, "y", n)
        w = _EMPTY if w is None else as_float64_vector(w, "w", n)
        theta = as_float64_vector(theta, "theta", P)
        par = model.use_parallel(n, self.parallel)
        if P >= INFERENCE_BLAS_MIN_PARAMS:
            return self._glm_blas_batch(X, y, w, theta, par)
        b = self._glm_buffers(par)
        b["grad"][:] = 0.0
        b["fisher"][...] = 0.0
        b["meat"][...] = 0.0
        if par:
            loss, weight = K.glm_inference_parallel(
                X, y, w, theta, model.family, b["grad"], b["fisher"], b["meat"], b["grad_t"],
                b["fisher_t"], b["meat_t"], b["SA_t"], b["SB_t"])
        else:
            loss, weight = K.glm_inference(X, y, w, theta, model.family, b["grad"],
                                           b["fisher"], b["meat"], b["SA_t"][0],
                                           b["SB_t"][0])
        return loss, weight, b["grad"], b["fisher"], b["meat"]

    def _glm_blas_batch(self, X, y, w, theta, parallel: bool):
        """:meth:`glm_batch` by blocks of rows: one kernel pass scales each block's rows
        (``√(wc) x̃`` and ``√w |r| x̃``, with the loss and gradient), then BLAS's ``dsyrk``
        adds each block's two Grams into the lower triangles of the transposed sums
        (the upper of ``fisher`` and ``meat``), concurrently in two threads when
        ``parallel``.
        """
        from scipy.linalg.blas import dsyrk

        from natgrad_stream.inference import _glm_kernels as K

        model = self.model
        n, P = X.shape[0], model.n_params
        b = self._blas_buffers()
        grad, fisher, meat = b["grad"], b["fisher"], b["meat"]
        grad[:] = 0.0
        fisher[...] = 0.0
        meat[...] = 0.0
        loss = weight = 0.0
        R = b["rows"]
        pool = self._pool() if parallel else None
        for a in range(0, n, R):
            e = min(a + R, n)
            SA = b["SA"][:(e - a) * P].reshape(e - a, P)
            SB = b["SB"][:(e - a) * P].reshape(e - a, P)
            lo, we = K.glm_scale_range(X, y, w, theta, model.family, a, e, a, grad, SA, SB)
            loss += lo
            weight += we
            if pool is not None:
                job = pool.submit(dsyrk, 1.0, SB.T, beta=1.0, c=meat.T, trans=0, lower=1,
                                  overwrite_c=1)
                dsyrk(1.0, SA.T, beta=1.0, c=fisher.T, trans=0, lower=1, overwrite_c=1)
                job.result()
            else:
                dsyrk(1.0, SA.T, beta=1.0, c=fisher.T, trans=0, lower=1, overwrite_c=1)
                dsyrk(1.0, SB.T, beta=1.0, c=meat.T, trans=0, lower=1, overwrite_c=1)
        symmetrize_from_upper(fisher)
        symmetrize_from_upper(meat)
        return loss, weight, grad, fisher, meat

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(1, thread_name_prefix="natgrad-gram")
        return self._executor

    def close(self) -> None:
        """Stop the Gram thread, if one was started."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _blas_buffers(self) -> dict:
        P = self.model.n_params
        b = self._blas
        if b is None:
            R = max(INFERENCE_BLAS_MIN_BLOCK_ROWS, INFERENCE_BLAS_BLOCK_BYTES // (16 * P))
            b = self._blas = {"rows": R, "SA": np.empty(R * P), "SB": np.empty(R * P),
                              "grad": np.zeros(P), "fisher": np.zeros((P, P)),
                              "meat": np.zeros((P, P))}
        return b

    def _glm_buffers(self, parallel: bool) -> dict:
        P = self.model.n_params
        T = self.n_threads if parallel else 1
        b = self._glm
        if b is None or b["grad_t"].shape[0] < T:
            b = self._glm = {
                "grad": np.zeros(P), "fisher": np.zeros((P, P)), "meat": np.zeros((P, P)),
                "grad_t": np.zeros((T, P)), "fisher_t": np.zeros((T, P, P) if T > 1
                                                                 else (1, 1, 1)),
                "meat_t": np.zeros((T, P, P) if T > 1 else (1, 1, 1)),
                "SA_t": np.zeros((T, P, BLOCK_ROWS)), "SB_t": np.zeros((T, P, BLOCK_ROWS))}
        return b


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
    ws = PassWorkspace(model)
    # one thread per BLAS call: the Grams run two at a time beside the reader's threads
    # (OpenBLAS's own pool, spinning between calls, took 15× the CPU at load 7)
    with limited_blas_threads(1), source.batches(
            batch_size=batch_size, epochs=1, shuffle=False, digests=digests,
            **model.data_checks()) as stream:
        try:
            for batch in stream:
                sums.add_batch(ws, batch.X, batch.y, batch.w, theta)
                if progress is not None:
                    progress(sums.rows)
        finally:
            ws.close()
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
    ws = PassWorkspace(model, parallel=False, n_threads=1)
    try:
        with chunk_window(source, chunks[order]).batches(
                batch_size=source.chunk_rows, epochs=1, shuffle=False, chunks_per_read=1,
                prefetch=1, **model.data_checks()) as stream:
            for i, batch in enumerate(stream):
                leaf = InferenceSums.zeros(model.n_params)
                leaf.add_batch(ws, batch.X, batch.y, batch.w, theta)
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
    from natgrad_stream.data.tables import is_table_path

    if is_table_path(path):
        raise TypeError("a Dask summary reads a Zarr store that every worker opens, not a "
                        "table: copy it first ('natgrad-stream convert SRC OUT.zarr') or "
                        "summarize it in one process (no --dask)")
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
