"""Synthetic task ``ising``: binary vectors from a known fully visible Boltzmann machine.

The true model is ``p(x) ∝ exp(−E(x))`` over ``x ∈ {0, 1}^d`` with
``E(x) = −Σ_{p<q} J_pq x_p x_q − Σ_p h_p x_p`` (the convention of
:mod:`natgrad_stream.models.ising`).

True parameters (a pure function of ``features`` and ``seed``): each pair is coupled with
probability ``min(1, EXPECTED_DEGREE / (d − 1))`` (so every unit has about
``EXPECTED_DEGREE`` neighbours whatever ``d``), with a random sign and a magnitude uniform on
``COUPLING_RANGE``; the fields are ``h_p = −½ Σ_q J_pq + N(0, FIELD_STD²)``, which in ±1
spins is a small field, so no unit is frozen and the data are informative about every
coupling.

Sampling: for ``d <= EXACT_MAX_FEATURES`` the ``2^d`` states are enumerated and rows are
drawn from the exact distribution. Larger ``d`` uses Gibbs sampling: ``GIBBS_CHAINS``
independent chains from uniform random states, ``GIBBS_BURN_IN`` sweeps of burn-in (a sweep
updates every unit once, in order), then one row per chain every ``GIBBS_THIN`` sweeps. Each
chunk runs its own chains from its own generator. Gibbs rows are approximate (finite
burn-in, correlated draws within a chain); at d = 8, where the exact distribution is known,
20,000 Gibbs rows match its first and second moments to 0.02 (``tests/test_ising.py``).

``true_params`` holds ``J`` (d × d symmetric, zero diagonal), ``h`` and the sampler used.
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._constants import RNG_TASK_TRUTH

#: Targets: none (an unsupervised task).
Y_DTYPE = None
#: Largest ``d`` sampled exactly by enumerating the ``2^d`` states.
EXACT_MAX_FEATURES = 16
#: Expected number of coupled neighbours per unit.
EXPECTED_DEGREE = 4.0
#: Range of coupling magnitudes ``|J_pq|`` (0/1 convention; ±1 couplings are a quarter).
COUPLING_RANGE = (0.5, 1.5)
#: Standard deviation of the fields around the balanced value ``−½ Σ_q J_pq``.
FIELD_STD = 0.5
#: Gibbs sampler (``d > EXACT_MAX_FEATURES``): chains, burn-in sweeps, sweeps between rows.
GIBBS_CHAINS = 256
GIBBS_BURN_IN = 500
GIBBS_THIN = 10


def true_params(features: int, seed: int) -> dict:
    """The true model: ``{"J": d×d list, "h": list, "sampler": {...}}``."""
    d = int(features)
    if d < 2:
        raise ValueError(f"the ising task needs at least 2 features, got {features}")
    rng = np.random.default_rng([seed, RNG_TASK_TRUTH["ising"]])
    density = min(1.0, EXPECTED_DEGREE / (d - 1))
    iu = np.triu_indices(d, k=1)
    m = iu[0].size
    coupled = rng.random(m) < density
    values = rng.choice([-1.0, 1.0], m) * rng.uniform(*COUPLING_RANGE, m) * coupled
    J = np.zeros((d, d))
    J[iu] = values
    J += J.T
    h = -0.5 * J.sum(axis=1) + FIELD_STD * rng.standard_normal(d)
    sampler = {"method": "exact"} if d <= EXACT_MAX_FEATURES else {
        "method": "gibbs", "chains": GIBBS_CHAINS, "burn_in": GIBBS_BURN_IN,
        "thin": GIBBS_THIN}
    return {"J": J.tolist(), "h": h.tolist(), "sampler": sampler}


def all_states(d: int) -> np.ndarray:
    """The ``2^d`` binary vectors, shape (2^d, d), float64; row ``k`` holds the bits of k."""
    return ((np.arange(2**d)[:, None] >> np.arange(d)) & 1).astype(np.float64)


def energies(X, J, h) -> np.ndarray:
    """``E(x) = −Σ_{p<q} J_pq x_p x_q − Σ_p h_p x_p`` per row, shape (n,)."""
    X = np.asarray(X, dtype=np.float64)
    J = np.asarray(J, dtype=np.float64)
    return -0.5 * np.einsum("ip,pq,iq->i", X, J - np.diag(np.diag(J)), X) - X @ np.asarray(h)


def exact_distribution(J, h) -> tuple[np.ndarray, np.ndarray]:
    """All states (2^d, d) and their exact probabilities (2^d,)."""
    d = len(h)
    if d > EXACT_MAX_FEATURES:
        raise ValueError(f"exact enumeration is limited to {EXACT_MAX_FEATURES} units, got {d}")
    S = all_states(d)
    logits = -energies(S, J, h)
    p = np.exp(logits - logits.max())
    return S, p / p.sum()


def sample_exact(J, h, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rows drawn exactly by enumeration, shape (n, d), float64."""
    S, p = exact_distribution(J, h)
    cdf = np.cumsum(p)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return S[np.minimum(idx, S.shape[0] - 1)]


def sample_gibbs(J, h, rng: np.random.Generator, n: int, *, chains: int = GIBBS_CHAINS,
                 burn_in: int = GIBBS_BURN_IN, thin: int = GIBBS_THIN) -> np.ndarray:
    """``n`` rows by Gibbs sampling (see the module docstring), shape (n, d), float64."""
    J = np.asarray(J, dtype=np.float64)
    J = J - np.diag(np.diag(J))
    h = np.asarray(h, dtype=np.float64)
    d = h.shape[0]
    m = max(1, min(int(chains), int(n)))
    draws = -(-int(n) // m)
    S = (rng.random((m, d)) < 0.5).astype(np.float64)
    out = np.empty((draws, m, d))

    def sweep():
        U = rng.random((m, d))
        for j in range(d):
            a = h[j] + S @ J[:, j]
            S[:, j] = U[:, j] < 0.5 * (1.0 + np.tanh(0.5 * a))  # U < sigmoid(a)

    for _ in range(int(burn_in)):
        sweep()
    for t in range(draws):
        for _ in range(int(thin)):
            sweep()
        out[t] = S
    return out.reshape(draws * m, d)[:n]


def sample_chunk(params: dict, rng: np.random.Generator, n: int):
    """``n`` rows from the true model: ``(X (n, d) float64 of 0/1, None)``."""
    J, h = np.asarray(params["J"]), np.asarray(params["h"])
    if len(h) <= EXACT_MAX_FEATURES:
        return sample_exact(J, h, rng, n), None
    s = params.get("sampler", {})
    return sample_gibbs(J, h, rng, n, chains=s.get("chains", GIBBS_CHAINS),
                        burn_in=s.get("burn_in", GIBBS_BURN_IN),
                        thin=s.get("thin", GIBBS_THIN)), None
