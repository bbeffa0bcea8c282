"""Streaming predictions: a fitted run's predictions for every row of a dataset, to a file.

The data are read as ``evaluate`` reads them (the same sources, chunk checks, manifests,
checksums and, on the run's training data, content digests), in row order, one read of
whole chunks at a time; each read's predictions
(:func:`~natgrad_stream.models.predictions.predict_columns`) are written before the next
read is used, so memory is bounded by the read buffers whatever the number of rows. The
output (:mod:`natgrad_stream.app.table_writers`) appears under its name only once every
row is written.

Columns, for ``K`` class labels ``c`` (the run's ``class_names`` when it recorded them,
e.g. the categories of an AnnData target, else the codes ``0 … K−1``):

=========  ============================================  ======================
kind       columns                                       models
=========  ============================================  ======================
``proba``  ``proba_<c>`` for each class                  logistic, softmax
``class``  ``class`` (the label; Zarr: the code)         logistic, softmax
``mean``   ``mean``                                      logistic, linear, poisson, mlp
``link``   ``link`` (softmax: ``link_<c>``)              logistic, softmax, linear, poisson
=========  ============================================  ======================

Defaults: ``proba`` and ``class`` for classifiers, ``mean`` for regressors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from natgrad_stream._constants import EVAL_BATCH_ROWS
from natgrad_stream.app.table_writers import (
    WRITERS,
    atomic_output,
    output_format,
    refuse_existing,
)
from natgrad_stream.data import as_source
from natgrad_stream.data.tables import check_feature_names, is_table_path
from natgrad_stream.errors import DataError, OptionError
from natgrad_stream.models.predictions import KINDS, check_kinds, n_columns, predict_columns


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """``--what proba,class`` as a tuple of kinds (None: the model's default)."""
    if text is None:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise OptionError(f"--what takes a comma-separated list of {', '.join(KINDS)}; got "
                          f"{text!r}")
    return kinds


def column_names(model, kinds, labels) -> dict[str, list[str]]:
    """``{kind: [column names]}`` (see the module's docstring)."""
    out = {}
    for kind in kinds:
        k = n_columns(model, kind)
        out[kind] = [f"{kind}_{c}" for c in labels] if k > 1 else [kind]
    return out


def predict_to_file(model, theta, data, out, *, what=None, x: str = "X",
                    class_names=None, overwrite: bool = False, digests=None,
                    attrs: dict | None = None, protect=(), feature_names=None,
                    exclude=()) -> dict:
    """Write ``model``'s predictions at ``theta`` for every row of ``data`` to ``out``.

    Parameters
    ----------
    model : Model
    theta : ndarray, shape (n_params,)
    data : path, zarr.Group, arrays, Source or iterable
        Features only are read (``x``); sparse stores and matrices too.
    out : path
        ``.zarr``, ``.parquet`` or ``.csv``.
    what : sequence of str, optional
        Kinds of prediction (``proba``, ``class``, ``mean``, ``link``); default the
        model's.
    class_names : sequence, optional
        Class labels in code order.
    overwrite : bool
        Replace an existing ``out`` (otherwise FileExistsError, before anything is read).
    digests : ChunkDigests, optional
        The run's content digests, when ``data`` is its training data.
    attrs : dict, optional
        Recorded with the output (Zarr attributes, Parquet metadata).
    protect : sequence of paths
        Paths ``out`` must not be or lie in (the data, the run directory).
    feature_names : sequence of str, optional
        The table columns the model was fitted on: a table whose columns differ (names
        or order) is a DataError.
    exclude : sequence of str
        Columns a table's default ``x`` (every column) leaves out: the run's target and
        weights.

    Returns
    -------
    dict
        ``path``, ``format``, ``rows``, ``columns``, ``seconds``, ``rows_per_s``.
    """
    fmt = output_format(out)
    kinds = check_kinds(model, what)
    _refuse_protected(Path(out), protect)
    refuse_existing(out, overwrite)
    source = as_source(data, x=x, y=None, exclude=exclude)
    check_feature_names(getattr(source, "feature_names", None), feature_names, array=x)
    if source.n_features != model.n_features:
        raise DataError(f"has {source.n_features} features but the model was fitted on "
                        f"{model.n_features}", array=x)
    classifier = "proba" in check_kinds(model, None)
    K = n_columns(model, "proba") if classifier else 0
    labels = list(class_names) if class_names is not None else list(range(K))
    names = column_names(model, kinds, labels)
    fields = {kind: n_columns(model, kind) for kind in kinds}
    chunk_rows = int(getattr(source, "chunk_rows", None) or EVAL_BATCH_ROWS)
    record = {"model": model.name, "kinds": list(kinds),
              "columns": [c for k in kinds for c in names[k]],
              "class_labels": [str(c) for c in labels] if classifier else None,
              "data": str(data) if isinstance(data, str | os.PathLike) else None, "x": x,
              **(attrs or {})}
    t0 = time.perf_counter()
    rows = source.n_rows
    with atomic_output(out, overwrite=overwrite) as tmp:
        writer = WRITERS[fmt](tmp, fields, names,
                              {"class": labels} if "class" in kinds else {}, rows,
                              chunk_rows, record)
        try:
            with source.batches(batch_size=max(int(rows or EVAL_BATCH_ROWS), 1), epochs=1,
                                shuffle=False, digests=digests,
                                **model.data_checks()) as stream, _Writes(writer) as writes:
                for batch in stream:
                    if batch.rows.size and batch.rows[0] >= 0 and \
                            int(batch.rows[0]) != writes.rows:  # pragma: no cover
                        raise RuntimeError(f"rows out of order: {int(batch.rows[0])} after "
                                           f"{writes.rows}")
                    writes.put(predict_columns(model, batch.X, theta, kinds))
            if writer.written == 0:
                raise DataError("no rows to predict", array=x)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    seconds = time.perf_counter() - t0
    return {"path": str(out), "format": fmt, "rows": int(writer.written),
            "columns": record["columns"], "seconds": round(seconds, 4),
            "rows_per_s": round(writer.written / seconds, 1) if seconds > 0 else None}


#: Whether blocks are written by a thread of their own, the next read's predictions being
#: computed meanwhile (at most one block waits).
BACKGROUND_WRITES = True


class _Writes:
    """``writer.write`` of each block :meth:`put`, on a thread of its own (at most one
    block waiting); its errors are raised by the next :meth:`put` or on leaving, which
    waits for the last write (also after an error: a temporary output is never removed
    while it is written).
    """

    def __init__(self, writer):
        self.writer, self.rows, self._pending, self._pool = writer, 0, None, None

    def __enter__(self):
        if BACKGROUND_WRITES:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="natgrad-predict-write")
        return self

    def put(self, block: dict) -> None:
        self.rows += len(next(iter(block.values())))
        if self._pool is None:
            self.writer.write(block)
            return
        self._wait()
        self._pending = self._pool.submit(self.writer.write, block)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __exit__(self, kind, exc, tb):
        if self._pool is None:
            return False
        try:
            if kind is None:
                self._wait()
            elif self._pending is not None:
                self._pending.exception()  # wait; the error being raised comes first
        finally:
            self._pool.shutdown(wait=True)
        return False


def _refuse_protected(out: Path, protect) -> None:
    """OptionError when ``out`` is, or lies inside, one of ``protect`` (the data read, the
    run directory): replacing them would lose what they hold.
    """
    target = out.resolve()
    for p in protect:
        if p is None or not isinstance(p, str | os.PathLike):
            continue
        p = Path(p).resolve()
        if target == p or p in target.parents:
            raise OptionError(f"--out {out} would replace or write inside {p}, which the "
                              "prediction reads; choose another path")


def predict_run(run_dir, data, out, *, what=None, x: str | None = None,
                overwrite: bool = False, allow_legacy: bool = False) -> dict:
    """:func:`predict_to_file` with the reported parameters of ``run_dir`` (the Polyak
    average when the run kept one), its class names, and its content digests when
    ``data`` is its training data (a chunk changed since the run read it is a DataError).

    ``x`` defaults to ``"X"``, or on a table to the run's column selection (its encoding
    included; by default every column but the run's target and weights); a table's
    columns must be the run's, in its order.
    """
    from natgrad_stream.app.runs import _is_training_data, _load_state, reported_theta
    from natgrad_stream.data.digests import ChunkDigests
    from natgrad_stream.models import model_from_config

    state = _load_state(run_dir, allow_legacy=allow_legacy)
    model = model_from_config(state["model"])
    check_kinds(model, what)  # a density model is refused before the data are opened
    info = state.get("run") or {}
    exclude = ()
    if x is None:
        fitted_on_table = is_table_path(data) and info.get("feature_names")
        x = (info.get("x") or "X") if fitted_on_table else "X"
        if fitted_on_table:  # (leaves the target and weights out of a default x)
            exclude = (info.get("y"), info.get("w"))
    digests = ChunkDigests.from_dict(state.get("digests")) \
        if state.get("digests") and _is_training_data(info, data, x, None, None) else None
    return predict_to_file(model, np.asarray(reported_theta(state)), data, out, what=what,
                           x=x, class_names=info.get("class_names"), overwrite=overwrite,
                           digests=digests, protect=(run_dir, data),
                           feature_names=info.get("feature_names"), exclude=exclude,
                           attrs={"run": str(run_dir), "run_id": info.get("run_id")})
