"""Synthetic datasets written chunk by chunk to Zarr v3 groups.

Features are raw and ill-conditioned, as real data are: ``x = offset + scale ⊙ (L z)`` with
``z ~ N(0, I)``, ``L`` a fixed random factor whose correlations are not axis-aligned
(a random rotation of a decaying spectrum), per-feature scales log-uniform over three
decades and offsets far from zero. Each chunk is generated from its own random stream
``(seed, array, chunk)``, so datasets far larger than memory are written in constant memory
and are identical whatever the chunk-writing order.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from natgrad_stream.models.gaussian_mean import PAPER_MIXING

TASKS = ("logistic", "linear", "gaussian-mean")
#: Per-feature scales are log-spaced over this many decades (in random order).
SCALE_DECADES = 3.0
#: Standard deviation of the logistic linear predictor (sets the Bayes error).
LOGIT_STD = 2.0
#: Smallest eigenvalue of the latent correlation spectrum (largest is 1).
LATENT_SPECTRUM_FLOOR = 1e-3
_ARRAY_IDS = {"X": 0, "X_test": 1}


class FeatureModel:
    """The fixed feature distribution of a dataset (derived from the seed only).

    Attributes
    ----------
    factor : ndarray, shape (d, d)
        ``L``: correlated latent ``u = L z`` with unit variances.
    scales, offsets : ndarray, shape (d,)
    """

    def __init__(self, features: int, seed: int):
        rng = np.random.default_rng([seed, 99])
        d = features
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        L = Q * np.sqrt(np.geomspace(1.0, LATENT_SPECTRUM_FLOOR, d))
        self.factor = L / np.sqrt((L * L).sum(axis=1, keepdims=True))
        half = SCALE_DECADES / 2
        self.scales = rng.permutation(np.logspace(-half, half, d)) if d > 1 else np.ones(1)
        self.offsets = self.scales * rng.uniform(-2.0, 2.0, d) + rng.uniform(0.5, 2.0)
        self.coef_direction = rng.standard_normal(d)
        self.rng_for_params = rng

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` rows of raw features, float64, shape (n, d)."""
        z = rng.standard_normal((n, self.factor.shape[0]))
        return self.offsets + self.scales * (z @ self.factor.T)

    def covariance(self) -> np.ndarray:
        """Exact feature covariance, shape (d, d)."""
        C = self.factor @ self.factor.T
        return C * np.outer(self.scales, self.scales)


def _true_params(task: str, fm: FeatureModel, features: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 98])
    if task in ("logistic", "linear"):
        beta = fm.coef_direction / fm.scales
        sd = math.sqrt(beta @ fm.covariance() @ beta)
        beta = beta * (LOGIT_STD / sd)
        intercept = float(-fm.offsets @ beta + rng.uniform(-0.5, 0.5))
        out = {"coef": beta.tolist(), "intercept": intercept}
        if task == "linear":
            out["noise_std"] = 1.0
        return out
    if features == 2:
        return {"theta": [0.0, 0.0], "mixing": PAPER_MIXING.tolist()}
    Q1, _ = np.linalg.qr(rng.standard_normal((features, features)))
    Q2, _ = np.linalg.qr(rng.standard_normal((features, features)))
    A = (Q1 * np.geomspace(1.0, 1e-2, features)) @ Q2.T * 3.0
    return {"theta": rng.standard_normal(features).tolist(), "mixing": A.tolist()}


def _chunk(task, fm, params, rng, n):
    if task == "gaussian-mean":
        A = np.asarray(params["mixing"])
        return A @ np.asarray(params["theta"]) + rng.standard_normal((n, A.shape[0])), None
    X = fm.sample(rng, n)
    z = X @ np.asarray(params["coef"]) + params["intercept"]
    if task == "logistic":
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        return X, (rng.random(n) < p).astype(np.uint8)
    return X, (z + rng.standard_normal(n)).astype(np.float32)


def make_dataset(path, *, task: str, rows: int, features: int, chunk_rows: int = 65536,
                 test_rows: int = 0, seed: int = 0, dtype: str = "float32",
                 overwrite: bool = False):
    """Write a synthetic dataset as a Zarr v3 group and return the opened group.

    Parameters
    ----------
    path : path-like
        Output directory (``*.zarr``).
    task : {"logistic", "linear", "gaussian-mean"}
        ``logistic``: ``y ~ Bernoulli(sigmoid(x·β + b))`` (uint8). ``linear``:
        ``y = x·β + b + N(0, 1)`` (float32). ``gaussian-mean``: ``x ~ N(Aθ, I)`` (no ``y``);
        with two features, the paper's ``A`` and ``θ = 0``; otherwise a random
        ill-conditioned ``A`` stored as the array ``A``.
    rows, features : int
    chunk_rows : int
        Rows per Zarr chunk (chunks span all columns).
    test_rows : int
        Also write ``X_test`` (and ``y_test``) from the same distribution when > 0.
    seed : int
    dtype : {"float32", "float64"}
        Feature dtype.
    overwrite : bool
        Replace an existing ``path``.

    Notes
    -----
    The group is written under a temporary name and renamed into place, so an interrupted
    run never leaves a half-written dataset at ``path``. Attributes under ``natgrad_stream``
    record the task, seed, sizes and the true parameters.
    """
    import zarr

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    for name, v, lo in (("rows", rows, 1), ("features", features, 1),
                        ("chunk_rows", chunk_rows, 1), ("test_rows", test_rows, 0)):
        if int(v) < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fm = FeatureModel(features, seed)
    params = _true_params(task, fm, features, seed)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        codec = zarr.codecs.ZstdCodec(level=1)
        for xname, yname, n in (("X", "y", rows), ("X_test", "y_test", test_rows)):
            if n == 0:
                continue
            r = min(int(chunk_rows), n)
            X = group.create_array(xname, shape=(n, features), chunks=(r, features),
                                   dtype=dtype, compressors=codec)
            Y = None
            if task != "gaussian-mean":
                ydtype = "uint8" if task == "logistic" else "float32"
                Y = group.create_array(yname, shape=(n,), chunks=(r,), dtype=ydtype,
                                       compressors=codec)
            for c in range(math.ceil(n / r)):
                a, b = c * r, min((c + 1) * r, n)
                rng = np.random.default_rng([seed, _ARRAY_IDS[xname], c])
                Xc, yc = _chunk(task, fm, params, rng, b - a)
                X[a:b] = Xc.astype(dtype)
                if Y is not None:
                    Y[a:b] = yc
        if task == "gaussian-mean":
            A = np.asarray(params["mixing"])
            group.create_array("A", shape=A.shape, dtype="float64")[...] = A
        group.attrs["natgrad_stream"] = {
            "task": task, "seed": seed, "rows": rows, "features": features,
            "test_rows": test_rows, "chunk_rows": chunk_rows, "dtype": dtype,
            "true_params": params,
        }
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return zarr.open_group(str(path), mode="r")
