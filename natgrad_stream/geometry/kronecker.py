"""A Kronecker-factored metric for softmax regression: ``D² + m²`` memory, not ``(m·D)²``.

Softmax regression's row metric is ``A_i ⊗ x̃_i x̃_iᵀ`` (θ in ``m = K − 1`` class blocks
of ``D = d + 1``, the reference class dropped; ``A_i`` the row's ``m × m`` class weight,
``diag(p′) − p′p′ᵀ`` for the model Fisher). The K-FAC approximation (Martens & Grosse
2015) replaces the mean of the products by the product of the means,

    G = E[A_i ⊗ x̃x̃ᵀ] ≈ S ⊗ F,   S = E[A_i] (m × m),   F = E[x̃x̃ᵀ] (D × D),

exact when ``A_i`` is the same on every row (e.g. all logits equal) and otherwise right
to first order in how ``A_i`` varies with ``x``. An L2 penalty ``λ I_S`` (coefficients,
not intercepts) is folded in by K-FAC's factored Tikhonov damping, ``(S + πγI) ⊗ (F +
(γ/π) J)`` with ``γ = √λ``, ``J`` the identity on the coefficients and ``π =
√((tr F/D) / (tr S/m))``, which exceeds ``S ⊗ F + λ I_S`` by positive cross terms only.

Each factor is shrunk for the rows behind it (:func:`~natgrad_stream.geometry.shrinkage.shrink`,
with its own dimension: ``F`` is trusted from ``5·D`` rows, not ``5·P``) and factored as the
full structure factors a metric (:func:`~natgrad_stream.geometry.whitening.whiten`: Jacobi
scale, the intercept eliminated exactly from ``F``, damping and floor), ``W_Fᵀ W_F = F_reg``
and ``W_Sᵀ W_S = S_reg``. Then ``W = W_S ⊗ W_F`` has ``WᵀW = S_reg ⊗ F_reg``, and every map is
two matrix products on θ viewed as the ``m × D`` matrix ``Θ``: ``φ = W_S Θ W_Fᵀ``,
O(m·D² + m²·D).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from natgrad_stream._constants import UNIDENTIFIED_NAMED
from natgrad_stream.errors import WhiteningError
from natgrad_stream.geometry.whitening import Whitener, WhitenerDiagnostics, whiten


@dataclass
class KroneckerMetric:
    """A metric ``S ⊗ F + penalty·I_S`` known through its factors (sums or means).

    Attributes
    ----------
    features : ndarray, shape (D, D)
        ``F`` (the intercept's row and column last).
    classes : ndarray, shape (m, m)
        ``S``.
    penalty : float
        λ (times the weight, in a sum).
    exact_diagonal : ndarray, shape (P,), optional
        The metric's own diagonal (penalty included) where it was measured beside the
        factors (a whole pass's, for its checks).
    """

    features: np.ndarray
    classes: np.ndarray
    penalty: float = 0.0
    exact_diagonal: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        """``P = m·D``."""
        return self.classes.shape[0] * self.features.shape[0]

    def matvec(self, U: np.ndarray) -> np.ndarray:
        """``(S ⊗ F + λ I_S) U`` for ``U`` of shape (P,) or (P, k)."""
        out = kron_apply(self.classes, self.features, U)
        if self.penalty:
            D = self.features.shape[0]
            pen = self.penalty * np.asarray(U, dtype=np.float64).reshape(
                self.classes.shape[0], D, -1)
            pen[:, D - 1] = 0.0  # (the intercepts are not penalized)
            out = out + pen.reshape(U.shape)
        return out

    def diagonal(self) -> np.ndarray:
        """``diag(S ⊗ F + λ I_S)``, shape (P,)."""
        g = np.kron(np.diag(self.classes), np.diag(self.features))
        if self.penalty:
            D = self.features.shape[0]
            g[np.arange(g.shape[0]) % D != D - 1] += self.penalty
        return g

    def dense(self) -> np.ndarray:
        """``S ⊗ F + λ I_S`` as a P × P array (tests and small P only)."""
        G = np.kron(self.classes, self.features)
        if self.penalty:
            D = self.features.shape[0]
            idx = np.flatnonzero(np.arange(G.shape[0]) % D != D - 1)
            G[idx, idx] += self.penalty
        return G


def kron_apply(left: np.ndarray, right: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(L ⊗ R) v`` for ``v`` of shape (P,) or (P, k), ``P = cols(L)·cols(R)``: in θ's
    class-major layout, ``L V Rᵀ`` with each column of ``v`` viewed as the
    cols(L) × cols(R) matrix ``V`` (O(P·(rows(L) + rows(R)))).
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        V = v.reshape(left.shape[1], right.shape[1])
        return (left @ V @ right.T).reshape(-1)
    k = v.shape[1]
    V = v.reshape(left.shape[1], right.shape[1], k)
    T = np.tensordot(left, V, axes=(1, 0))  # (L rows, cols(R), k)
    T = np.tensordot(T, right, axes=(1, 1))  # (L rows, k, R rows)
    return np.ascontiguousarray(T.transpose(0, 2, 1)).reshape(-1, k)


def tikhonov_factors(G: KroneckerMetric) -> tuple[np.ndarray, np.ndarray]:
    """``(S + πγI, F + (γ/π) J)``: the factors with the penalty folded in (module
    docstring); the factors themselves (new arrays) without one.
    """
    F = np.array(G.features, dtype=np.float64)
    S = np.array(G.classes, dtype=np.float64)
    lam = float(G.penalty)
    if not lam > 0:
        return S, F
    D, m = F.shape[0], S.shape[0]
    tf, ts = float(np.trace(F)) / D, float(np.trace(S)) / m
    pi = np.sqrt(tf / ts) if tf > 0 and ts > 0 else 1.0
    gamma = np.sqrt(lam)
    S[np.diag_indices(m)] += pi * gamma
    idx = np.arange(D - 1)
    F[idx, idx] += gamma / pi
    return S, F


def whiten_kronecker(G: KroneckerMetric, *, method: str = "eigh", damping: float,
                     floor: float) -> KroneckerWhitener:
    """Factor a Kronecker metric into ``W = W_S ⊗ W_F`` (module docstring).

    Raises
    ------
    WhiteningError
        When a factor is non-finite, zero, or cannot be factored.
    """
    S, F = tikhonov_factors(G)
    D = F.shape[0]
    try:
        wf = whiten(F, method=method, damping=damping, floor=floor, center=D - 1,
                    overwrite=True)
        ws = whiten(S, method=method, damping=damping, floor=floor, overwrite=True)
    except WhiteningError as exc:
        raise WhiteningError(f"Kronecker factor: {exc}") from exc
    return KroneckerWhitener(ws.matrix, ws.inverse, wf.matrix, wf.inverse,
                             _diagnostics(ws.diagnostics, wf.diagnostics, S.shape[0], D))


def _diagnostics(ds: WhitenerDiagnostics, df: WhitenerDiagnostics, m: int, D: int
                 ) -> WhitenerDiagnostics:
    """The product's diagnostics: condition numbers multiply; a count is of the product's
    eigenvalues (or parameters) that involve a counted one of either factor.
    """
    def both(a: int, b: int) -> int:
        return a * D + b * m - a * b

    k = UNIDENTIFIED_NAMED
    named = sorted({a * D + j for a in range(m) for j in df.unidentified_params[:k]}
                   | {a * D + j for a in ds.unidentified_params[:k] for j in range(min(D, k))})
    return WhitenerDiagnostics(
        df.method, ds.condition_number * df.condition_number,
        ds.raw_condition_number * df.raw_condition_number, both(ds.floored, df.floored),
        max(ds.damping, df.damping), both(ds.zero_diagonal, df.zero_diagonal),
        both(ds.unidentified, df.unidentified), named[:UNIDENTIFIED_NAMED])


class KroneckerWhitener(Whitener):
    """``W = W_S ⊗ W_F``, stored as its factors.

    Parameters
    ----------
    classes, classes_inverse : ndarray, shape (m, m)
        ``W_S`` and ``W_S⁻¹``.
    features, features_inverse : ndarray, shape (D, D)
        ``W_F`` and ``W_F⁻¹``.
    diagnostics : WhitenerDiagnostics or None
    """

    def __init__(self, classes, classes_inverse, features, features_inverse,
                 diagnostics=None):  # noqa: D107
        self.classes = np.ascontiguousarray(classes, dtype=np.float64)
        self.classes_inverse = np.ascontiguousarray(classes_inverse, dtype=np.float64)
        self.features = np.ascontiguousarray(features, dtype=np.float64)
        self.features_inverse = np.ascontiguousarray(features_inverse, dtype=np.float64)
        self.diagnostics = diagnostics

    @property
    def diagonal(self) -> bool:
        """False: ``W`` is stored as its Kronecker factors."""
        return False

    @property
    def n_params(self) -> int:
        """``P = m·D``."""
        return self.classes.shape[0] * self.features.shape[0]

    def phi(self, theta):
        """``φ = W θ = W_S Θ W_Fᵀ`` (θ of shape (P,) or (P, k))."""
        return kron_apply(self.classes, self.features, theta)

    def theta(self, phi):
        """``θ = W⁻¹ φ = W_S⁻¹ Φ W_F⁻ᵀ``."""
        return kron_apply(self.classes_inverse, self.features_inverse, phi)

    def grad_phi(self, grad_theta):
        """``∇φJ = W⁻ᵀ ∇θJ = W_S⁻ᵀ ∇ W_F⁻¹``."""
        return kron_apply(self.classes_inverse.T, self.features_inverse.T, grad_theta)

    @property
    def matrix(self) -> np.ndarray:
        """``W`` as a dense P × P array (O(P²): only momentum and adam's state transport
        across a refresh reads it).
        """
        return np.kron(self.classes, self.features)

    @property
    def inverse(self) -> np.ndarray:
        """``W⁻¹`` as a dense P × P array (O(P²), as :attr:`matrix`)."""
        return np.kron(self.classes_inverse, self.features_inverse)

    def metric_in_phi(self, G):
        """``W⁻ᵀ G W⁻¹`` for a :class:`KroneckerMetric` or a dense (P, P) or diagonal (P,)
        ``G`` (a dense P × P result).
        """
        if isinstance(G, KroneckerMetric):
            G = G.dense()
        Gd = np.diag(G) if G.ndim == 1 else G
        Winv = self.inverse
        return Winv.T @ Gd @ Winv

    def drift(self, G, rng: np.random.Generator, *, probes: int) -> float:
        """``‖W⁻ᵀ G W⁻¹ − I‖_F / √P`` by Hutchinson probes, ``G`` a :class:`KroneckerMetric`
        (O(probes·(m·D² + m²·D))) or a diagonal (P,).
        """
        V = rng.standard_normal((self.n_params, probes))
        U = self.theta(V)
        if isinstance(G, KroneckerMetric):
            GU = G.matvec(U)
        else:
            GU = (G if G.ndim == 1 else np.diag(G))[:, None] * U
        R = self.grad_phi(GU) - V
        return float(np.sqrt(np.sum(R * R) / (probes * self.n_params)))

    def state_dict(self) -> dict:
        """Arrays to checkpoint."""
        out = {"kind": "kronecker", "classes": self.classes,
               "classes_inverse": self.classes_inverse, "features": self.features,
               "features_inverse": self.features_inverse}
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics.to_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> KroneckerWhitener:
        """Rebuild from :meth:`state_dict`."""
        return cls(*(np.asarray(state[k]) for k in ("classes", "classes_inverse", "features",
                                                      "features_inverse")))


def shrink_factors(G: KroneckerMetric, rows: float | None, *, density: float = 1.0
                   ) -> tuple[KroneckerMetric, float]:
    """Each factor of a running estimate shrunk toward its diagonal for the ``rows`` behind
    it (:func:`~natgrad_stream.geometry.shrinkage.shrink`, the intercept eliminated from
    ``F`` first; None: not shrunk), and ``F``'s feature diagonal given the evidence prior of
    sparse rows (:func:`~natgrad_stream.geometry.shrinkage.add_evidence_prior`, ``density``
    the share of features a row holds). ``G``'s arrays are overwritten. Returns the shrunk
    metric and the largest intensity.
    """
    from natgrad_stream.geometry.shrinkage import add_evidence_prior, shrink

    D = G.features.shape[0]
    F, rho_f = shrink(G.features, rows, centers=(D - 1,), overwrite=True)
    S, rho_s = shrink(G.classes, rows, overwrite=True)
    if rows is not None:
        diag = np.diag(F).copy()
        if add_evidence_prior(diag, rows, density, slice(0, D - 1)):
            F[np.diag_indices(D)] = diag
    return KroneckerMetric(F, S, G.penalty), max(rho_f, rho_s)
