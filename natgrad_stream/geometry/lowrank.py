"""A diagonal-plus-low-rank metric for wide models: ``O(P·k)`` memory and work.

The running metric is kept as two linear sketches of ``G``: its diagonal ``diag(G)``
(shape (P,)) and ``Y = G T`` (shape (P, k)) for a fixed random test matrix ``T``, drawn
once from the first batch's diagonal (``T = D₀^-½ Ω``, ``Ω`` Gaussian, so that the sketch
sees the Jacobi-scaled metric and not the raw feature scales). Both are sums of the
batches' metric-vector products (:meth:`Model.metric_matvec`, O(n·P·k) by BLAS), so they
decay, merge and checkpoint exactly like the other structures' running sums. This is the
single-pass Nyström sketch of Tropp, Yurtsever, Udell & Cevher (2017, "Fixed-rank
approximation of a positive-semidefinite matrix from streaming data", Alg. 3), chosen over
Frequent Directions because it needs only metric-vector products, which every model
has (Frequent Directions needs each row's metric factors, which the GLMs' fused kernels
never form, and an SVD of a 2ℓ × P buffer every ℓ rows).

A refresh is the randomized eigensolver: ``Â = Y (TᵀY)⁺ Yᵀ = U Λ Uᵀ`` (a shifted
Cholesky and a thin SVD, O(P·k²)), with ``Â ⪯ G`` and ``Â = G`` exactly when ``G`` has
rank at most ``k`` (or ``k ≥ P``); its error is ``E‖G − Â‖_* ≤ (1 + r/(k − r − 1))
‖G − [G]_r‖_*`` for any ``r < k − 1``. In the Jacobi-scaled coordinates (``D = diag(G)``)
the metric is modelled as

    Ĝ = D^-½ G D^-½ ≈ E + Z Zᵀ,   Z = D^-½ U Λ^½ (P × k),   E = Diag(1 − rowsum(Z∘Z)) ≥ 0,

i.e. the low-rank part plus the exact diagonal of the rest (``Ĝ − Z Zᵀ ⪰ 0`` is replaced by
its diagonal). Regularized as the full structure's ``eigh`` is (``E + ε``, floored), with
``M = E^-½ Z = Q Σ Vᵀ`` (thin QR and SVD),

    Ĝ_reg = E^½ (I + Q Σ² Qᵀ) E^½ = (K E^½)ᵀ (K E^½),   K = I + Q((1 + Σ²)^½ − 1)Qᵀ,

so ``W = K diag(a)`` with ``a = (E·D)^½`` and ``W⁻¹ = diag(1/a) K⁻¹``, ``K⁻¹ = I +
Q((1 + Σ²)^-½ − 1)Qᵀ``: every map ``W``, ``W⁻¹``, ``W⁻ᵀ`` is O(P·k). With ``k = 0`` this
is the diagonal structure's whitener; when the sketch is exact and ``E`` is round-off
(``G`` of rank ≤ k, or ``k ≥ P``) it is the full structure's symmetric root
``(Ĝ + εI)^½ D^½``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from natgrad_stream.errors import WhiteningError
from natgrad_stream.geometry.whitening import Whitener, WhitenerDiagnostics

#: The test matrix's seed (fixed: the sketch is part of the run's state, checkpointed).
TEST_SEED = 0x10A4
#: The Nyström shift ``ν = NYSTROM_SHIFT · ‖Y‖_F`` (Tropp et al. 2017, Alg. 3) that keeps
#: the k × k Cholesky factorization of ``Tᵀ Y`` finite on a metric of rank below k.
NYSTROM_SHIFT = 1e-13
#: Methods a low-rank whitener supports: both give ``WᵀW = G_reg = D^½(E + ε + ZZᵀ)D^½``
#: (the factorization of the k × k core is the same).
METHODS = ("eigh", "ridge")


@dataclass
class SketchedMetric:
    """A metric known through its diagonal and its products with a test matrix.

    Attributes
    ----------
    diagonal : ndarray, shape (P,)
        ``diag(G)``.
    sketch : ndarray, shape (P, k)
        ``G T``.
    test : ndarray, shape (P, k)
        ``T``.
    """

    diagonal: np.ndarray
    sketch: np.ndarray
    test: np.ndarray


def draw_test_matrix(diagonal: np.ndarray, rank: int) -> np.ndarray:
    """``T = D^-½ Ω`` (P × rank), ``Ω`` standard Gaussian from :data:`TEST_SEED`;
    coordinates of zero diagonal take the largest diagonal's scale.
    """
    d = np.asarray(diagonal, dtype=np.float64)
    top = float(d.max()) if d.size else 0.0
    d = np.where(d > 0, d, top if top > 0 else 1.0)
    omega = np.random.default_rng([TEST_SEED, d.shape[0], int(rank)]).standard_normal(
        (d.shape[0], int(rank)))
    return omega / np.sqrt(d)[:, None]


def widen_test_matrix(test: np.ndarray, rank: int) -> np.ndarray:
    """``test`` (P × k) with ``rank − k`` more columns (P × rank; ``test`` itself when
    ``rank ≤ k``): Gaussian columns from :data:`TEST_SEED` scaled by each row's RMS over
    ``test`` (which estimates that row's ``D₀^-½`` to about 1/√(2k)), so the new columns
    see the same Jacobi scaling. A function of ``test`` alone: the same matrix for every
    pass and after a resume.
    """
    T = np.asarray(test, dtype=np.float64)
    P, k = T.shape
    if rank <= k:
        return T
    scale = np.sqrt(np.mean(T * T, axis=1)) if k else np.ones(P)
    omega = np.random.default_rng([TEST_SEED, P, k, int(rank)]).standard_normal(
        (P, int(rank) - k))
    return np.hstack([T, omega * scale[:, None]])


def nystrom(sketch: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Nyström approximation ``G ≈ U diag(lam) Uᵀ`` from ``Y = G T``.

    Parameters
    ----------
    sketch, test : ndarray, shape (P, k)
        ``Y`` and ``T``.

    Returns
    -------
    U : ndarray, shape (P, k), orthonormal columns
    lam : ndarray, shape (k,), ≥ 0, descending

    Raises
    ------
    WhiteningError
        When the sketch is not finite or its core cannot be factored.
    """
    Y, T = np.asarray(sketch, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if not np.all(np.isfinite(Y)):
        raise WhiteningError("low-rank sketch has non-finite entries")
    k = Y.shape[1]
    if k == 0:
        return np.zeros((Y.shape[0], 0)), np.zeros(0)
    # ν relative to G's scale seen through T (‖Y‖/‖T‖), so that rescaling T changes nothing
    nu = NYSTROM_SHIFT * float(np.linalg.norm(Y)) / max(float(np.linalg.norm(T)), 1e-300) \
        * np.sqrt(Y.shape[0])
    Yn = Y + nu * T
    B = T.T @ Yn
    B = 0.5 * (B + B.T)
    try:
        C = scipy.linalg.cholesky(B, lower=False)  # B = CᵀC
        F = scipy.linalg.solve_triangular(C, Yn.T, trans="T", lower=False).T  # Yn C⁻¹
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        # the shift was too small for the round-off of TᵀY: a pseudo-inverse square root
        s, V = np.linalg.eigh(B)
        keep = s > 1e-12 * max(float(s.max()), 0.0)
        if not keep.any():
            return np.zeros((Y.shape[0], 0)), np.zeros(0)
        F = Yn @ (V[:, keep] / np.sqrt(s[keep]))
    U, sv, _ = np.linalg.svd(F, full_matrices=False)
    lam = np.maximum(sv * sv - nu, 0.0)
    return U, lam


def scaled_factor(G: SketchedMetric) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The Jacobi-scaled model ``Ĝ ≈ E + Z Zᵀ`` of the module docstring.

    Returns
    -------
    d : ndarray, shape (P,)
        The Jacobi scale (``diag(G)``; a zero diagonal takes the largest, scaled diagonal 1).
    E : ndarray, shape (P,)
        The residual diagonal, ≥ 0.
    Z : ndarray, shape (P, k)
    zero : int
        Parameters of zero diagonal.
    """
    diag = np.asarray(G.diagonal, dtype=np.float64)
    if not np.all(np.isfinite(diag)):
        raise WhiteningError("metric has non-finite entries")
    top = float(diag.max()) if diag.size else 0.0
    if not top > 0:
        raise WhiteningError("metric is zero: no data have moved the parameters yet")
    if diag.min() < 0:
        raise WhiteningError(f"metric has a negative diagonal entry ({diag.min():.3g})")
    moved = diag > 0
    d = np.where(moved, diag, top)
    # the sketch of Ĝ = R G R (R = D^-½) with the test matrix R⁻¹T: Ĝ R⁻¹T = R (G T), the
    # same core TᵀGT; the eigensolver then works (and shifts) in the scaled coordinates,
    # where no parameter's scale sets another's round-off
    root = np.sqrt(d)[:, None]
    U, lam = nystrom(G.sketch / root, G.test * root)
    Z = U * np.sqrt(lam)[None, :]
    Z[~moved] = 0.0  # (Â ⪯ G: already zero to round-off there)
    E = np.where(moved, np.maximum(1.0 - np.einsum("ij,ij->i", Z, Z), 0.0), 1.0)
    return d, E, Z, int((~moved).sum())


def whiten_lowrank(G: SketchedMetric, *, method: str = "eigh", damping: float,
                   floor: float) -> LowRankWhitener:
    """Factor a sketched metric into a :class:`LowRankWhitener` with ``WᵀW = G_reg``.

    ``damping`` ε is relative to the scaled metric's mean eigenvalue (1, as for
    :func:`~natgrad_stream.geometry.whitening.whiten`); the residual diagonal is floored
    at ``floor`` times the largest eigenvalue's bound ``max(E)·(1 + σ²_max)``.
    """
    if method not in METHODS:
        raise WhiteningError(f"structure lowrank factors with {' or '.join(METHODS)}, "
                             f"not {method!r}")
    d, E, Z, zero = scaled_factor(G)
    eps = damping * float(np.mean(E + np.einsum("ij,ij->i", Z, Z)))
    E = E + eps
    Q, sig2 = _core(Z, E)
    top = float(E.max()) * (1.0 + (float(sig2.max()) if sig2.size else 0.0))
    lo = floor * top
    n_floor = int(np.sum(E < lo))
    if n_floor:
        E = np.maximum(E, lo)
        Q, sig2 = _core(Z, E)
    cond = float(E.max() * (1.0 + (sig2.max() if sig2.size else 0.0)) / E.min())
    diagn = WhitenerDiagnostics(method, cond, np.inf, n_floor, eps, zero)
    out = LowRankWhitener(np.sqrt(E * d), Q, sig2, diagn)
    if not (np.all(np.isfinite(out.scale)) and np.all(np.isfinite(Q))):
        raise WhiteningError("low-rank factorization produced non-finite values")
    return out


def _core(Z: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E^-½ Z = Q Σ Vᵀ``: ``Q`` (P × r) and ``Σ²`` (r,) of its non-zero singular values."""
    if Z.shape[1] == 0:
        return np.zeros((Z.shape[0], 0)), np.zeros(0)
    M = Z / np.sqrt(E)[:, None]
    Qm, R = np.linalg.qr(M)
    Ur, s, _ = np.linalg.svd(R)
    keep = s > 1e-12 * max(float(s.max()), 1e-300)
    return Qm @ Ur[:, keep], s[keep] ** 2


class LowRankWhitener(Whitener):
    """``W = K diag(a)``, ``K = I + Q diag(c) Qᵀ`` with ``c = (1 + σ²)^½ − 1``.

    Parameters
    ----------
    scale : ndarray, shape (P,)
        ``a``.
    basis : ndarray, shape (P, r)
        ``Q``, orthonormal columns.
    sig2 : ndarray, shape (r,)
        ``σ²`` (so ``K² = I + Q diag(σ²) Qᵀ``).
    diagnostics : WhitenerDiagnostics or None
    """

    def __init__(self, scale, basis, sig2, diagnostics=None):  # noqa: D107
        self.scale = np.ascontiguousarray(scale, dtype=np.float64)
        self.basis = np.ascontiguousarray(basis, dtype=np.float64).reshape(
            self.scale.shape[0], -1)
        self.sig2 = np.ascontiguousarray(sig2, dtype=np.float64)
        root = np.sqrt(1.0 + self.sig2)
        self._up, self._down = root - 1.0, 1.0 / root - 1.0
        self.diagnostics = diagnostics

    @property
    def diagonal(self) -> bool:
        """False: ``W`` is not diagonal (it is stored in factored form)."""
        return False

    @property
    def n_params(self) -> int:
        """``P``."""
        return self.scale.shape[0]

    @property
    def rank(self) -> int:
        """``r``, the columns of ``Q``."""
        return self.basis.shape[1]

    def _k(self, v: np.ndarray, c: np.ndarray) -> np.ndarray:
        Q = self.basis
        return v + Q @ (c[:, None] * (Q.T @ v)) if v.ndim == 2 else v + Q @ (c * (Q.T @ v))

    def _a(self, v: np.ndarray) -> np.ndarray:
        return self.scale[:, None] if v.ndim == 2 else self.scale

    def phi(self, theta):
        """``φ = W θ = K(a θ)`` (θ of shape (P,) or (P, m))."""
        return self._k(self._a(theta) * theta, self._up)

    def theta(self, phi):
        """``θ = W⁻¹ φ = (K⁻¹ φ) / a``."""
        return self._k(phi, self._down) / self._a(phi)

    def grad_phi(self, grad_theta):
        """``∇φJ = W⁻ᵀ ∇θJ = K⁻¹(∇θJ / a)``."""
        return self._k(grad_theta / self._a(grad_theta), self._down)

    @property
    def matrix(self) -> np.ndarray:
        """``W`` as a dense P × P array (O(P²): only momentum and adam's state transport
        across a refresh reads it).
        """
        return self._k(np.diag(self.scale), self._up)

    @property
    def inverse(self) -> np.ndarray:
        """``W⁻¹`` as a dense P × P array (O(P²), as :attr:`matrix`)."""
        return self._k(np.eye(self.n_params), self._down) / self.scale[:, None]

    def metric_in_phi(self, G):
        """``W⁻ᵀ G W⁻¹`` for a dense or diagonal ``G`` (O(P²) memory)."""
        Winv = self.inverse
        Gd = np.diag(G) if G.ndim == 1 else G
        return Winv.T @ Gd @ Winv

    def drift(self, G, rng: np.random.Generator, *, probes: int) -> float:
        """``‖W⁻ᵀ G W⁻¹ − I‖_F / √P`` by Hutchinson probes, with ``G`` a
        :class:`SketchedMetric` (its diagonal-plus-low-rank model) or a diagonal (P,).
        """
        V = rng.standard_normal((self.n_params, probes))
        U = self.theta(V)
        if isinstance(G, SketchedMetric):
            d, E, Z, _ = scaled_factor(G)
            r = np.sqrt(d)[:, None]
            Us = U * r
            GU = r * (E[:, None] * Us + Z @ (Z.T @ Us))
        else:
            GU = (G if G.ndim == 1 else np.diag(G))[:, None] * U
        R = self.grad_phi(GU) - V
        return float(np.sqrt(np.sum(R * R) / (probes * self.n_params)))

    def state_dict(self) -> dict:
        """Arrays to checkpoint."""
        out = {"kind": "lowrank", "scale": self.scale, "basis": self.basis, "sig2": self.sig2}
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics.to_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> LowRankWhitener:
        """Rebuild from :meth:`state_dict`."""
        return cls(np.asarray(state["scale"]), np.asarray(state["basis"]),
                   np.asarray(state["sig2"]))


def whitener_from_state(state: dict) -> Whitener:
    """A checkpointed whitener of any structure."""
    if state.get("kind") == "lowrank":
        return LowRankWhitener.from_state(state)
    if state.get("kind") == "kronecker":
        from natgrad_stream.geometry.kronecker import KroneckerWhitener

        return KroneckerWhitener.from_state(state)
    return Whitener.from_state(state)
