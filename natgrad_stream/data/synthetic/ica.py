"""Synthetic task ``ica``: independent Laplace sources mixed by a known square matrix.

``x = A s`` with ``s`` i.i.d. unit-variance Laplace sources (super-Gaussian, excess
kurtosis 3) and ``A = Q₁ diag(σ) Q₂ᵀ``: random rotations and singular values log-spaced
from 1 down to :data:`MIXING_FLOOR`, rescaled so that the features have unit mean variance
(``tr(AAᵀ)/d = 1``). ``A`` is stored beside ``X`` as the array ``"A"``; the data are
zero-mean (as the :class:`~natgrad_stream.models.ica.ICA` model assumes). No targets.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

Y_DTYPE = None
#: Smallest singular value of the mixing matrix relative to the largest (its condition
#: number is the inverse).
MIXING_FLOOR = 0.1


def true_params(features: int, seed: int) -> dict:
    """The true mixing matrix ``{"mixing": (d, d) list}``; a pure function of its arguments."""
    d = int(features)
    if d < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["ica"]])
    Q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sv = np.geomspace(1.0, MIXING_FLOOR, d) if d > 1 else np.ones(1)
    A = (Q1 * sv) @ Q2.T
    A *= np.sqrt(d / np.sum(A * A))
    return {"mixing": A.tolist()}


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows ``x = A s``, float64 (n, d), with unit-variance Laplace ``s``; no targets."""
    A = np.asarray(params["mixing"], dtype=np.float64)
    S = rng.laplace(scale=1.0 / np.sqrt(2.0), size=(int(n), A.shape[1]))
    return S @ A.T, None


def extra_arrays(params: dict) -> dict:
    """The mixing matrix, stored as the array ``"A"``."""
    return {"A": np.asarray(params["mixing"], dtype=np.float64)}
