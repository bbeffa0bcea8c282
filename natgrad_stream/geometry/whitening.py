"""Whitening the parameter space: ``φ = W θ`` with ``WᵀW ≈ G(θ_fixed)``.

The metric is first Jacobi-scaled, ``Ĝ = D^-½ G D^-½`` with ``D = diag(G)``, which makes
the regularization invariant to rescaling any single parameter and keeps the symmetric
eigendecomposition accurate when raw feature scales span decades. Then:

``method="eigh"``
    ``Ĝ + εI = V diag(s) Vᵀ``, eigenvalues floored at ``floor·max(s)``, and
    ``W = V diag(√s) Vᵀ D^½``. With ``scale=False`` this is exactly the paper's symmetric
    root ``W = G^½`` (eq. 17).
``method="ridge"``
    Cholesky ``Ĝ + εI = UᵀU`` and ``W = U D^½``, so ``W⁻¹W⁻ᵀ∇ = (G + εD)⁻¹∇``: the ridge
    solve of eq. 36, at a third of the cost of ``eigh``.
``method="robust"``
    Stochastic robust approximation (eq. 35): ``(ĜᵀĜ + ε'I)⁻¹Ĝᵀ`` with
    ``ε' = ε·(tr Ĝ/P)²``, i.e. eigenvalues ``s/(s² + ε')`` of the inverse metric; ``W``
    is the symmetric root of its inverse. It stays finite on a singular metric.

Every threshold is per parameter, so no parameter's scale decides anything for another:
a parameter is read as zero (the data never move it) when its diagonal is exactly zero, or
after an elimination step (``center``) at most ``ZERO_DIAGONAL_FRACTION`` of its own
diagonal before the elimination (a feature constant on the data); negative round-off is
judged against the same own diagonal. Rescaling any parameter ``θ_j → θ_j / s`` (a feature
column ``x_j → s x_j``, ``s`` anywhere in float64 range) therefore leaves every decision,
and the natural gradient in the rescaled coordinates, unchanged up to round-off.

A diagonal metric (shape ``(P,)``, eq. 34) gives a diagonal ``W``. Every choice satisfies
``WᵀW = G_reg``, so the natural gradient ``W⁻¹W⁻ᵀ∇θJ = G_reg⁻¹∇θJ`` is the same; they
differ only in the coordinates φ that an optimizer sees (footnote 1 of the paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.linalg

from natgrad_stream._constants import (
    DEFAULT_DAMPING,
    DEFAULT_EIGEN_FLOOR,
    NEGATIVE_DIAGONAL_TOLERANCE,
    NULL_EIGENVALUE_FRACTION,
    UNIDENTIFIED_NAMED,
    ZERO_DIAGONAL_FRACTION,
)
from natgrad_stream.errors import WhiteningError

METHODS = ("eigh", "ridge", "robust")


@dataclass(frozen=True)
class WhitenerDiagnostics:
    """What a refresh found.

    Attributes
    ----------
    method : str
    condition_number : float
        Condition number of the regularized (scaled) metric that was factored.
    raw_condition_number : float
        Condition number of the scaled metric before damping and flooring (``inf`` if
        singular).
    floored : int
        Eigenvalues raised to the floor.
    damping : float
        Absolute damping added to the scaled metric.
    zero_diagonal : int
        Parameters whose metric diagonal was zero (the data never moved them), or became
        zero to round-off relative to their own diagonal in an elimination step.
    unidentified : int
        Directions along which the scaled metric is zero to round-off (no row seen has
        moved them, e.g. the sum of a full one-hot encoding's columns after the intercept's
        elimination), given the prior eigenvalue instead of the floor.
    unidentified_params : list of int
        The parameters those directions move (each at least a tenth of the most moved, in
        the scaled coordinates), the first ``UNIDENTIFIED_NAMED`` of them.
    """

    method: str
    condition_number: float
    raw_condition_number: float
    floored: int
    damping: float
    zero_diagonal: int
    unidentified: int = 0
    unidentified_params: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (infinite condition numbers become None)."""
        out = asdict(self)
        for k in ("condition_number", "raw_condition_number"):
            if not np.isfinite(out[k]):
                out[k] = None
        return out


class Whitener:
    """A linear change of coordinates ``φ = W θ`` (dense matrix or diagonal).

    Parameters
    ----------
    matrix, inverse : ndarray, shape (P, P) or (P,)
        ``W`` and ``W⁻¹`` (1-D for a diagonal whitener).
    diagnostics : WhitenerDiagnostics or None
    """

    def __init__(self, matrix: np.ndarray, inverse: np.ndarray, diagnostics=None):
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        self.inverse = np.ascontiguousarray(inverse, dtype=np.float64)
        self.diagnostics = diagnostics

    @classmethod
    def identity(cls, n_params: int, *, diagonal: bool = False) -> Whitener:
        """``W = I`` (steepest descent in θ)."""
        if diagonal:
            return cls(np.ones(n_params), np.ones(n_params))
        return cls(np.eye(n_params), np.eye(n_params))

    @property
    def diagonal(self) -> bool:
        """True when ``W`` is stored as its diagonal."""
        return self.matrix.ndim == 1

    @property
    def n_params(self) -> int:
        """``P``."""
        return self.matrix.shape[0]

    def phi(self, theta: np.ndarray) -> np.ndarray:
        """``φ = W θ``."""
        return self.matrix * theta if self.diagonal else self.matrix @ theta

    def theta(self, phi: np.ndarray) -> np.ndarray:
        """``θ = W⁻¹ φ``."""
        return self.inverse * phi if self.diagonal else self.inverse @ phi

    def grad_phi(self, grad_theta: np.ndarray) -> np.ndarray:
        """``∇φJ = W⁻ᵀ ∇θJ`` (the chain rule through ``θ = W⁻¹φ``)."""
        return self.inverse * grad_theta if self.diagonal else self.inverse.T @ grad_theta

    def natural_gradient(self, grad_theta: np.ndarray) -> np.ndarray:
        """``G_reg⁻¹ ∇θJ = W⁻¹ W⁻ᵀ ∇θJ`` (eq. 25)."""
        return self.theta(self.grad_phi(grad_theta))

    def metric_in_phi(self, G: np.ndarray) -> np.ndarray:
        """The metric seen in φ coordinates, ``W⁻ᵀ G W⁻¹`` (identity right after a refresh)."""
        if self.diagonal:
            g = G if G.ndim == 1 else np.diag(G)
            return g * self.inverse**2
        Winv = self.inverse
        return Winv.T @ G @ Winv

    def drift(self, G: np.ndarray, rng: np.random.Generator, *, probes: int) -> float:
        """Estimate ``‖W⁻ᵀ G W⁻¹ − I‖_F / √P`` with Gaussian probe vectors (Hutchinson).

        Costs ``probes`` matrix-vector products with ``G`` and ``W⁻¹``: O(probes·P²).
        """
        if self.diagonal:
            g = G if G.ndim == 1 else np.diag(G)
            return float(np.sqrt(np.mean((g * self.inverse**2 - 1.0) ** 2)))
        V = rng.standard_normal((self.n_params, probes))
        U = self.inverse @ V
        R = self.inverse.T @ (G @ U) - V
        return float(np.sqrt(np.sum(R * R) / (probes * self.n_params)))

    def vector_map_to(self, new: Whitener) -> np.ndarray:
        """Matrix carrying φ-displacements into ``new`` coordinates: ``W_new W_old⁻¹``."""
        if self.diagonal and new.diagonal:
            return new.matrix * self.inverse
        if isinstance(new, EigenWhitener):  # (W_new applied to W_old⁻¹, in its memory)
            Winv = self.inverse
            M = Winv if isinstance(self, EigenWhitener) else \
                (np.diag(Winv) if Winv.ndim == 1 else Winv.copy())
            return new.phi(M, overwrite=True)
        return _dense(new.matrix) @ _dense(self.inverse)

    def covector_map_to(self, new: Whitener) -> np.ndarray:
        """Matrix carrying φ-gradients into ``new`` coordinates: ``W_new⁻ᵀ W_oldᵀ``."""
        if self.diagonal and new.diagonal:
            return new.inverse * self.matrix
        if isinstance(new, EigenWhitener):
            return new.grad_phi(np.ascontiguousarray(_dense(self.matrix).T), overwrite=True)
        return _dense(new.inverse).T @ _dense(self.matrix).T

    def state_dict(self) -> dict:
        """Arrays to checkpoint."""
        out = {"matrix": self.matrix, "inverse": self.inverse}
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics.to_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> Whitener:
        """Rebuild from :meth:`state_dict` (diagnostics are informational only)."""
        if state.get("kind") == "eigen":
            return EigenWhitener.from_state(state)
        return cls(np.asarray(state["matrix"]), np.asarray(state["inverse"]))


def _col(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``v`` (shape (P,)) broadcast over ``x``'s columns when ``x`` is (P, m)."""
    return v if x.ndim == 1 else v[:, None]


class EigenWhitener(Whitener):
    """A symmetric-root whitener kept as its eigenpairs: ``W = V diag(r) Vᵀ diag(q) E``.

    ``V diag(r²) Vᵀ`` is the regularized Jacobi-scaled metric (``eigh``; ``robust``'s
    transformed eigenvalues), ``q = √d`` the Jacobi scale, and ``E = ⋯ E_k₂ E_k₁`` with
    ``E_k = I + e_k m_kᵀ`` the exact eliminations of the centres ``k₁, k₂, …`` in the order
    made (:func:`_eliminate`; ``E_k⁻¹ = I − e_k m_kᵀ``, as ``m_k`` is zero at ``k``).
    ``W`` and ``W⁻¹ = E⁻¹ diag(1/q) V diag(1/r) Vᵀ`` are applied as two products with
    ``V`` each, so a whitener holds one P × P array instead of two, and
    a refresh never forms ``W`` or ``W⁻¹`` (:attr:`matrix` and :attr:`inverse` build
    them when asked, for the transport maps of optimizers with a state).

    Parameters
    ----------
    vectors_t : ndarray, shape (P, P)
        ``Vᵀ`` (C-ordered: a row per eigenvector, as LAPACK leaves ``V`` in Fortran order).
    root, scale : ndarray, shape (P,)
        ``r`` and ``q``.
    centers : sequence of int
        ``k₁, k₂, …``.
    shifts : ndarray, shape (len(centers), P)
        ``m_k``, each zero at its own ``k``.
    diagnostics : WhitenerDiagnostics or None
    """

    def __init__(self, vectors_t, root, scale, centers=(), shifts=None,
                 diagnostics=None):  # noqa: D107
        self.vectors_t = np.ascontiguousarray(vectors_t, dtype=np.float64)
        self.root = np.ascontiguousarray(root, dtype=np.float64)
        self.scale = np.ascontiguousarray(scale, dtype=np.float64)
        self.centers = tuple(int(c) for c in centers)
        P = self.scale.shape[0]
        self.shifts = np.zeros((0, P)) if shifts is None else \
            np.asarray(shifts, dtype=np.float64).reshape(len(self.centers), P)
        self.diagnostics = diagnostics

    @property
    def diagonal(self) -> bool:
        """False: ``W`` is dense (stored as its eigenpairs)."""
        return False

    @property
    def n_params(self) -> int:
        """``P``."""
        return self.scale.shape[0]

    def eliminated(self, center: int, shift: np.ndarray) -> EigenWhitener:
        """``W E_center`` with ``E_center = I + e_center shiftᵀ`` (an elimination step made
        before this whitener's).
        """
        return EigenWhitener(self.vectors_t, self.root, self.scale,
                             (int(center), *self.centers),
                             np.vstack([shift[None, :], self.shifts]), self.diagnostics)

    def _core(self, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``V diag(r) Vᵀ x``."""
        y = self.vectors_t @ x
        y *= _col(r, x)
        return self.vectors_t.T @ y

    def phi(self, theta: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
        """``φ = W θ`` (θ of shape (P,) or (P, m); ``overwrite``: θ's memory is used)."""
        t = theta if overwrite else np.array(theta, dtype=np.float64)
        for k, m in zip(self.centers, self.shifts, strict=True):
            t[k] += m @ t
        t *= _col(self.scale, t)
        if t.ndim == 2:  # (in t's memory: a transport map holds no third P × P array)
            y = self.vectors_t @ t
            y *= self.root[:, None]
            return np.matmul(self.vectors_t.T, y, out=t)
        return self._core(t, self.root)

    def theta(self, phi: np.ndarray) -> np.ndarray:
        """``θ = W⁻¹ φ``."""
        u = self._core(phi, 1.0 / self.root)
        u /= _col(self.scale, u)
        for k, m in zip(self.centers[::-1], self.shifts[::-1], strict=True):
            u[k] -= m @ u
        return u

    def grad_phi(self, grad_theta: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
        """``∇φJ = W⁻ᵀ ∇θJ`` (``overwrite``: ∇θJ's memory is used)."""
        g = grad_theta if overwrite else np.array(grad_theta, dtype=np.float64)
        for k, m in zip(self.centers, self.shifts, strict=True):
            g -= np.multiply.outer(m, g[k])
        g /= _col(self.scale, g)
        if g.ndim == 2:
            y = self.vectors_t @ g
            y /= self.root[:, None]
            return np.matmul(self.vectors_t.T, y, out=g)
        return self._core(g, 1.0 / self.root)

    @property
    def matrix(self) -> np.ndarray:
        """``W`` as a dense P × P array (built on each call)."""
        W = (self.vectors_t.T * self.root) @ self.vectors_t
        W *= self.scale[None, :]
        for k, m in zip(self.centers[::-1], self.shifts[::-1], strict=True):
            rank_one_update(W, 1.0, W[:, k].copy(), m)
        return W

    @property
    def inverse(self) -> np.ndarray:
        """``W⁻¹`` as a dense P × P array (built on each call)."""
        Winv = (self.vectors_t.T / self.root) @ self.vectors_t
        Winv /= self.scale[:, None]
        for k, m in zip(self.centers[::-1], self.shifts[::-1], strict=True):
            Winv[k] -= m @ Winv
        return Winv

    def metric_in_phi(self, G: np.ndarray) -> np.ndarray:
        """``W⁻ᵀ G W⁻¹``."""
        return self.grad_phi(_dense(G) @ self.inverse, overwrite=True)

    def drift(self, G: np.ndarray, rng: np.random.Generator, *, probes: int) -> float:
        """As :meth:`Whitener.drift`, through the eigenpairs."""
        V = rng.standard_normal((self.n_params, probes))
        U = self.theta(V)
        R = self.grad_phi(G @ U, overwrite=True) - V
        return float(np.sqrt(np.sum(R * R) / (probes * self.n_params)))

    def state_dict(self) -> dict:
        """Arrays to checkpoint."""
        out = {"kind": "eigen", "vectors_t": self.vectors_t, "root": self.root,
               "scale": self.scale, "centers": np.asarray(self.centers, dtype=np.int64),
               "shifts": self.shifts}
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics.to_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> EigenWhitener:
        """Rebuild from :meth:`state_dict`."""
        return cls(np.asarray(state["vectors_t"]), np.asarray(state["root"]),
                   np.asarray(state["scale"]), np.asarray(state["centers"]).tolist(),
                   np.asarray(state["shifts"]))


def _eliminate(G: np.ndarray, k: int, *, overwrite: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """One exact block-elimination step on parameter ``k`` (in ``G`` itself when
    ``overwrite``).

    With ``m = G[:, k] / G[k, k]`` (``m_k = 0``) and ``E = I − m e_kᵀ``, returns
    ``G_c = E G Eᵀ``, whose row and column ``k`` vanish off the diagonal, and ``m``; then
    ``G = E⁻¹ G_c E⁻ᵀ``. For an intercept (``x̃_k = 1``) ``m`` is the metric-weighted mean
    of the features and ``G_c`` the metric of centred features.
    """
    g = G[:, k].copy()
    m = g / g[k]
    # g ⊗ (g / g_kk), not (g ⊗ g) / g_kk: on a saturated unit's parameters (entries near
    # 1e-200) the squares underflow and the Schur complement would lose its sign
    Gc = G if overwrite else G.copy()
    rank_one_update(Gc, -1.0, g, m)
    m[k] = 0.0
    Gc[k, :] = 0.0
    Gc[:, k] = 0.0
    Gc[k, k] = g[k]
    symmetrize(Gc)
    return Gc, m


#: Rows per tile of the in-place P × P updates below: their temporaries are tiles, never
#: another P × P matrix (at P = 3,000 each is 69 MiB).
TILE_ROWS = 256


def rank_one_update(A: np.ndarray, alpha: float, x: np.ndarray, y: np.ndarray) -> None:
    """``A += alpha · x ⊗ y`` in place, a tile of rows at a time (A of shape (P, Q))."""
    for i in range(0, A.shape[0], TILE_ROWS):
        A[i:i + TILE_ROWS] += alpha * np.outer(x[i:i + TILE_ROWS], y)


def symmetrize(A: np.ndarray) -> None:
    """``A ← (A + Aᵀ) / 2`` in place (A square), tile pair by tile pair."""
    P = A.shape[0]
    for i in range(0, P, TILE_ROWS):
        for j in range(i, P, TILE_ROWS):
            t = 0.5 * (A[i:i + TILE_ROWS, j:j + TILE_ROWS] + A[j:j + TILE_ROWS, i:i + TILE_ROWS].T)
            A[i:i + TILE_ROWS, j:j + TILE_ROWS] = t
            A[j:j + TILE_ROWS, i:i + TILE_ROWS] = t.T


def _whiten_blocks(G, blocks, centers, **options) -> Whitener:
    """Factor each diagonal block of ``G`` separately; assemble a block-diagonal ``W``."""
    P = G.shape[0]
    bounds = np.asarray(blocks, dtype=np.int64)
    if bounds[0] != 0 or bounds[-1] != P or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"blocks must be increasing boundaries from 0 to {P}, got {bounds}")
    W, Winv = np.zeros((P, P)), np.zeros((P, P))
    parts, named = [], []
    diag = np.diag(G)
    top = float(np.max(diag)) if P else 0.0
    if not top > 0:
        raise WhiteningError("metric is zero: no data have moved the parameters yet")
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if not np.max(diag[a:b]) > 0:
            # a block the data have not moved (an absolute test: a block of small scale is
            # factored on its own like any other). No diagonal of its own to judge negative
            # round-off against, so the largest one is used, as in whiten().
            if np.min(diag[a:b]) < -NEGATIVE_DIAGONAL_TOLERANCE * top:
                raise WhiteningError(
                    f"metric has a negative diagonal entry ({np.min(diag[a:b]):.3g})")
            # W for a parameter the data do not move is arbitrary (its gradient is zero):
            # the unit the full structure would give it
            s = np.sqrt(ZERO_DIAGONAL_FRACTION * top)
            W[a:b, a:b], Winv[a:b, a:b] = s * np.eye(b - a), np.eye(b - a) / s
            parts.append(WhitenerDiagnostics(options.get("method", "eigh"), 1.0, np.inf, 0,
                                             0.0, int(b - a)))
            continue
        inner = [c - a for c in centers if a <= c < b]
        part = whiten(G[a:b, a:b], center=inner or None, **options)
        W[a:b, a:b], Winv[a:b, a:b] = part.matrix, part.inverse
        parts.append(part.diagnostics)
        named += [a + j for j in part.diagnostics.unidentified_params]
    parts = [d for d in parts if d is not None]
    diagn = WhitenerDiagnostics(
        parts[0].method, max(d.condition_number for d in parts),
        max(d.raw_condition_number for d in parts), sum(d.floored for d in parts),
        max(d.damping for d in parts), sum(d.zero_diagonal for d in parts),
        sum(d.unidentified for d in parts), named[:UNIDENTIFIED_NAMED]) if parts else None
    return Whitener(W, Winv, diagn)


def _dense(a: np.ndarray) -> np.ndarray:
    return np.diag(a) if a.ndim == 1 else a


def whiten(G: np.ndarray, *, method: str = "eigh", damping: float = DEFAULT_DAMPING,
           floor: float = DEFAULT_EIGEN_FLOOR, scale: bool = True,
           center=None, blocks=None, overwrite: bool = False) -> Whitener:
    """Factor a metric into a whitener ``W`` with ``WᵀW = G_reg``.

    Parameters
    ----------
    G : ndarray, shape (P, P) or (P,)
        Symmetric positive semi-definite metric, or its diagonal.
    method : {"eigh", "ridge", "robust"}
        See the module docstring.
    damping : float
        ε, relative to the scaled metric's mean eigenvalue (its trace / P, which is 1).
    floor : float
        Eigenvalue floor relative to the largest eigenvalue (``eigh``, ``robust``).
    scale : bool
        Jacobi-scale before factoring (recommended; it also gives directions the metric
        has not seen, zero to round-off, the mean eigenvalue instead of the floor).
        ``scale=False, damping=0`` gives the exact symmetric root ``G^½``.
    center : int or sequence of int, optional
        Indices of intercept-like parameters to eliminate exactly first (Schur-complement
        steps, :func:`_eliminate`): it centres the metric, removing the near-collinearity
        of an intercept with non-centred features, which otherwise inflates the condition
        number by ``(mean/std)²`` of the features. A centre whose diagonal is zero (or
        round-off of its own after an earlier step) is not eliminated.
    blocks : ndarray, shape (B + 1,), optional
        Group boundaries of a block-diagonal metric: each diagonal block is factored on
        its own (cost ``Σ P_b³``) and ``W`` is block-diagonal (stored dense).
    overwrite : bool
        Use ``G``'s memory as workspace (its values are lost; with ``eigh`` and
        ``robust`` the whitener's ``W`` is written there): a refresh of a P × P metric then
        holds ``G`` (``W``), the eigenvectors and ``W⁻¹`` at its peak, and nothing else of
        that size.

    Returns
    -------
    Whitener

    Raises
    ------
    WhiteningError
        When ``G`` is non-finite, has a negative diagonal, or cannot be factored.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if damping < 0 or floor < 0:
        raise ValueError("damping and floor must be >= 0")
    G = np.asarray(G, dtype=np.float64)
    if not np.all(np.isfinite(G)):
        raise WhiteningError("metric has non-finite entries")
    centers = () if center is None else \
        ((int(center),) if np.ndim(center) == 0 else tuple(int(c) for c in center))
    if blocks is not None and G.ndim == 2 and len(blocks) > 2:
        return _whiten_blocks(G, blocks, centers, method=method, damping=damping, floor=floor,
                              scale=scale, overwrite=overwrite)
    if G.ndim != 2:
        centers = ()
    # each parameter's own scale, the reference of every threshold below
    own = (np.diag(G) if G.ndim == 2 else G).copy()
    return _whiten(G, own, centers, method, damping, floor, scale, overwrite)


def _whiten(G, own, centers, method, damping, floor, scale, overwrite=False) -> Whitener:
    """:func:`whiten` after validation; ``own`` holds each parameter's diagonal before any
    elimination step, the scale that its zero and round-off tests are relative to.
    """
    # only a parameter the data actually move can be eliminated exactly: one whose diagonal
    # is zero, or round-off of its own after an earlier step, is skipped (a positive input
    # diagonal of any size, e.g. a saturated unit's bias at 1e-86, is eliminated exactly:
    # it is a rescaled parameter like any other)
    centers = tuple(c for c in centers if G[c, c] > ZERO_DIAGONAL_FRACTION * own[c])
    if centers:
        center, rest = centers[0], centers[1:]
        G, m = _eliminate(G, center, overwrite=overwrite)
        inner = _whiten(G, own, rest, method, damping, floor, scale, True)
        # W = W_c E⁻ᵀ with E⁻ᵀ = I + e_k mᵀ;  W⁻¹ = Eᵀ W_c⁻¹ with Eᵀ = I − e_k mᵀ; in
        # place (m_k = 0, so column k of W and row k of W⁻¹ m are read unchanged)
        if isinstance(inner, EigenWhitener):
            return inner.eliminated(center, m)
        W = inner.matrix
        rank_one_update(W, 1.0, W[:, center].copy(), m)
        Winv = inner.inverse  # − e_k ⊗ (m W_c⁻¹): only row k changes
        Winv[center] -= m @ Winv
        return Whitener(W, Winv, inner.diagnostics)
    diag = G if G.ndim == 1 else np.diag(G)
    ref = np.maximum(own, 0.0)
    if np.any(diag < 0):
        # round-off of an elimination step leaves about −1e-16 of the parameter's own
        # diagonal on a zero one; a negative input diagonal has no scale of its own and is
        # judged against the largest
        tol = NEGATIVE_DIAGONAL_TOLERANCE * np.where(ref > 0, ref, float(np.max(np.abs(diag))))
        if np.any(diag < -tol):
            raise WhiteningError(f"metric has a negative diagonal entry ({diag.min():.3g})")
        G = np.maximum(G, 0.0) if G.ndim == 1 else (G if overwrite else G.copy())
        if G.ndim == 2:
            neg = np.flatnonzero(np.diag(G) < 0)
            G[neg, neg] = 0.0
        diag = G if G.ndim == 1 else np.diag(G)
    top = float(diag.max()) if diag.size else 0.0
    if not top > 0:
        raise WhiteningError("metric is zero: no data have moved the parameters yet")
    # zero: exactly zero, or round-off of the parameter's own diagonal before elimination
    zero = diag <= ZERO_DIAGONAL_FRACTION * ref
    if scale:
        # Jacobi scale of a zero parameter: its own diagonal before elimination, so that its
        # scaled diagonal is round-off and damping holds it (a constant feature does not
        # drift along the null direction it shares with the intercept); one the data never
        # moved (a feature not seen yet, e.g. a rare category) has no scale of its own: it
        # gets the largest diagonal and a scaled diagonal of 1, decoupled from the others,
        # so that when it first appears its step is as short as the stiffest parameter's
        # (a tiny metric there sent θ to 1e14 on the first rare category seen)
        unseen = zero & ~(ref > 0)
        d = np.where(zero, np.where(ref > 0, ref, top), diag)
    else:
        unseen = np.zeros(diag.shape, dtype=bool)
        d = np.ones_like(diag)
    sqrt_d = np.sqrt(d)
    if G.ndim == 1:
        return _whiten_diagonal(diag, d, sqrt_d, zero, method, damping, floor, scale)
    S = G if overwrite else G.copy()  # scaled, symmetrized and factored in place
    if scale:
        S /= sqrt_d[:, None]
        S /= sqrt_d[None, :]
    symmetrize(S)
    if unseen.any():
        S[unseen, :] = 0.0
        S[:, unseen] = 0.0
        S[unseen, unseen] = 1.0
    mean_diag = float(np.trace(S)) / S.shape[0]
    eps = damping * mean_diag
    try:
        if method == "ridge":
            A = S + eps * np.eye(S.shape[0])
            U = scipy.linalg.cholesky(A, lower=False)  # A = UᵀU, W_scaled = U
            Uinv = scipy.linalg.solve_triangular(U, np.eye(S.shape[0]), lower=False)
            W = U * sqrt_d[None, :]
            Winv = Uinv / sqrt_d[:, None]
            rcond, _ = scipy.linalg.lapack.dpocon(U, np.abs(A).sum(axis=0).max())
            cond = 1.0 / rcond if rcond > 0 else np.inf  # LAPACK 1-norm estimate
            raw_cond = np.inf  # no spectrum is computed on this path
            n_floor = n_null = 0
            null_params = []
        else:
            # S is symmetric, so S.T is the same matrix: Fortran-ordered when S is
            # C-ordered, which LAPACK factors in place (S itself would be copied first)
            s, V = scipy.linalg.eigh(S.T, overwrite_a=True, check_finite=False)
            raw_cond = float(s[-1] / s[0]) if s[0] > 0 else np.inf
            s, n_null = _unidentified_to_prior(s) if scale else (s, 0)
            null_params = _moved_by(V[:, :n_null]) if n_null else []
            if method == "robust":
                # eq. 35: G_reg⁻¹ = (GᵀG + ε'I)⁻¹Gᵀ has eigenvalues s/(s² + ε'), with
                # ε' = ε·(tr Ĝ/P)²; the floor keeps W finite where s = 0.
                lo = floor * s[-1]
                n_floor = int(np.sum(s < lo))
                s = np.maximum(s, lo)
                eps = damping * mean_diag ** 2
                s = (s * s + eps) / s
            else:
                s = s + eps
                lo = floor * s.max()
                n_floor = int(np.sum(s < lo))
                s = np.maximum(s, lo)
            cond = float(s.max() / s.min())
            # W = V s^½ Vᵀ D^½ is kept as V (Fortran-ordered from LAPACK: Vᵀ is C-ordered,
            # no copy) and s^½; S, LAPACK's workspace, is the caller's to free
            del S
            root = np.sqrt(s)
            if not (np.all(np.isfinite(V)) and np.all(np.isfinite(root)) and root.min() > 0):
                raise WhiteningError(f"{method} factorization produced non-finite values")
            diagn = WhitenerDiagnostics(method, cond, raw_cond, n_floor, eps,
                                        int(zero.sum()), n_null, null_params)
            return EigenWhitener(V.T, root, sqrt_d, diagnostics=diagn)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError) as exc:
        raise WhiteningError(f"{method} factorization failed: {exc}") from exc
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(Winv))):
        raise WhiteningError(f"{method} factorization produced non-finite values")
    diagn = WhitenerDiagnostics(method, cond, raw_cond, n_floor, eps, int(zero.sum()),
                                n_null, null_params)
    return Whitener(W, Winv, diagn)


def _unidentified_to_prior(s: np.ndarray) -> tuple[np.ndarray, int]:
    """Eigenvalues ``s`` (ascending, of the Jacobi-scaled metric) with those below
    ``NULL_EIGENVALUE_FRACTION`` of the largest (zero to round-off: no row seen has moved
    that direction) set to the mean eigenvalue, and how many.

    The floor would make such a direction the *softest* of all, so the first rows that do
    move it (a category level missing from the rows the metric saw, breaking the
    collinearity of the others with the intercept) take a step 1/floor times too long: θ
    reached 5e6 on the second batch of a 200-level one-hot set. The data say nothing about
    its curvature; the mean eigenvalue (the scaled metric's trace / P, i.e. an average
    parameter's) is the neutral prior. Where the collinearity is real for all the data
    the gradient along it is zero, and the step is zero either way.
    """
    null = s < NULL_EIGENVALUE_FRACTION * s[-1]
    n_null = int(null.sum())
    if not n_null or n_null == s.size:
        return s, 0
    s = s.copy()
    s[null] = float(np.mean(s))
    return s, n_null


def _moved_by(V: np.ndarray) -> list[int]:
    """Parameters the directions ``V`` (shape (P, k), orthonormal) move at least a tenth as
    much as the most moved one (the first ``UNIDENTIFIED_NAMED``).
    """
    load = np.abs(V).max(axis=1)
    return np.flatnonzero(load >= 0.1 * load.max())[:UNIDENTIFIED_NAMED].tolist()


def _whiten_diagonal(diag, d, sqrt_d, zero, method, damping, floor, scale):
    g = diag / d if scale else diag.copy()
    raw_cond = float(g.max() / g.min()) if g.min() > 0 else np.inf
    lo = floor * g.max()
    n_floor = int(np.sum(g < lo))
    if method == "robust":
        g = np.maximum(g, lo)
        eps = damping * float(g.mean()) ** 2
        g = (g * g + eps) / g
    else:
        eps = damping * float(g.mean())
        g = np.maximum(g + eps, lo)
    root = np.sqrt(g) * sqrt_d
    diagn = WhitenerDiagnostics(method, float(g.max() / g.min()), raw_cond, n_floor, eps,
                                int(zero.sum()))
    return Whitener(root, 1.0 / root, diagn)
