"""Synthetic task ``gaussian``: rows from ``N(μ, Σ)`` with an ill-conditioned ``Σ``.

``Σ = diag(s) R diag(λ) Rᵀ diag(s)`` with ``R`` a random rotation, ``λ`` log-spaced from
1 down to :data:`SPECTRUM_FLOOR` and per-feature scales ``s`` log-spaced over
:data:`SCALE_DECADES` decades (in random order), so the correlations are not
axis-aligned and the condition number is large. The mean is far from zero:
``μ_j = s_j · u_j`` with ``u_j`` uniform in ``±[0.5, 2]`` (each feature's mean is between
half and twice its scale). No targets (``Y_DTYPE = None``).
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

Y_DTYPE = None
#: Smallest eigenvalue of the correlation spectrum (the largest is 1).
SPECTRUM_FLOOR = 1e-2
#: Per-feature scales span this many decades.
SCALE_DECADES = 2.0


def true_params(features: int, seed: int) -> dict:
    """The true ``{"mean": (d,), "cov": (d, d)}`` as lists; a pure function of its arguments."""
    d = int(features)
    if d < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["gaussian"]])
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.geomspace(1.0, SPECTRUM_FLOOR, d) if d > 1 else np.ones(1)
    C = (R * lam) @ R.T
    half = SCALE_DECADES / 2
    s = rng.permutation(np.logspace(-half, half, d)) if d > 1 else np.ones(1)
    cov = C * np.outer(s, s)
    cov = 0.5 * (cov + cov.T)
    mean = s * rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d)
    return {"mean": mean.tolist(), "cov": cov.tolist()}


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows from ``N(mean, cov)``, float64 (n, d), and no targets."""
    mean = np.asarray(params["mean"], dtype=np.float64)
    L = np.linalg.cholesky(np.asarray(params["cov"], dtype=np.float64))
    return mean + rng.standard_normal((int(n), mean.shape[0])) @ L.T, None
