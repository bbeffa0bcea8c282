"""The L2 penalty ``λ/2·‖θ_S‖²`` on a model's penalized coordinates ``S``.

The objective a learner minimizes with ``l2=λ`` is the mean data loss plus this term::

    J(θ) = Σ_i w_i ℓ_i(θ) / Σ_i w_i + λ/2 · Σ_{j ∈ S} θ_j²

``S`` is :attr:`natgrad_stream.models.Model.penalized_indices` (for the GLMs and softmax
the coefficients, never the intercepts). The term adds ``λ θ_S`` to the gradient and ``λ``
to the metric's diagonal on ``S`` (``G + λ I_S``: exactly the penalty's Hessian, so Fisher
scoring stays Newton's method for the GLMs). It is applied to whole-batch or whole-pass
*means* (or to sums with their weight), after the model's kernels and after Dask merges, so
no kernel and no worker knows about it.

L1 and elastic net are not offered (issue 18 asked whether a proximal step fits). The prox
of ``λ₁‖θ‖₁`` is a soft threshold only in a metric that is diagonal in θ: with the full or
block metric a natural (proximal-Newton) step needs ``argmin ½‖θ − θ⁺‖²_G + λ₁‖θ‖₁``, a
Lasso subproblem of its own (glmnet's and newGLMNET's inner coordinate descent), not one
thresholding; L-BFGS in φ would need an orthant-wise variant (OWL-QN); and the Newton
decrement that stops the scoring passes would become a prox-gradient residual. Only the
diagonal structure's step is a plain per-coordinate threshold, which alone is not worth an
option that every other structure would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from natgrad_stream.errors import OptionError
from natgrad_stream.optim._step_kernels import penalized_mean_gradient


@dataclass(frozen=True)
class L2Penalty:
    """``λ/2·‖θ_S‖²``.

    Attributes
    ----------
    lam : float
        λ >= 0 (0: no penalty; every method then returns its input unchanged).
    indices : ndarray of int64, shape (|S|,)
        The penalized coordinates of θ.
    """

    lam: float
    indices: np.ndarray

    def __post_init__(self):
        # the penalized set as a slice when contiguous (a GLM's coefficients), else a 0/1
        # mask: O(P) vector arithmetic instead of gathers of |S| indices every step
        idx = np.asarray(self.indices, dtype=np.int64)
        contiguous = idx.size > 0 and bool(np.all(np.diff(idx) == 1))
        object.__setattr__(self, "_slice", slice(int(idx[0]), int(idx[-1]) + 1)
                           if contiguous else None)

    def _selected(self, v: np.ndarray) -> np.ndarray:
        """``v`` restricted to ``S`` (a view when ``S`` is contiguous), shape (|S|, ...)."""
        return v[self._slice] if self._slice is not None else v[self.indices]

    @classmethod
    def for_model(cls, model, lam: float) -> L2Penalty:
        """The penalty ``lam`` on ``model``'s :attr:`~Model.penalized_indices`.

        Raises
        ------
        OptionError
            ``lam > 0`` for a model with no penalized coordinates.
        """
        idx = np.asarray(model.penalized_indices, dtype=np.int64)
        lam = float(lam or 0.0)
        if lam > 0 and idx.size == 0:
            raise OptionError(f"l2 does not apply to model {model.name!r}: it has no "
                              "coefficients to penalize")
        return cls(lam, idx)

    @property
    def active(self) -> bool:
        """Whether λ > 0."""
        return self.lam > 0

    @property
    def span(self) -> tuple[int, int] | None:
        """``(a, b)`` with ``S = [a, b)`` for a compiled kernel (``(0, 0)`` when inactive),
        or None when ``S`` is not contiguous.
        """
        if not self.active:
            return 0, 0
        return None if self._slice is None else (self._slice.start, self._slice.stop)

    def value(self, theta: np.ndarray) -> float:
        """``λ/2·‖θ_S‖²`` for ``theta`` of shape (P,)."""
        if not self.active:
            return 0.0
        t = self._selected(theta)
        return 0.5 * self.lam * float(t @ t)

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """``λ θ_S`` scattered into a (P,) vector (zeros off ``S``)."""
        g = np.zeros_like(theta, dtype=np.float64)
        if self.active:
            if self._slice is not None:
                np.multiply(theta[self._slice], self.lam, out=g[self._slice])
            else:
                g[self.indices] = self.lam * theta[self.indices]
        return g

    def mean_gradient(self, grad_sum: np.ndarray, wsum: float, theta: np.ndarray):
        """A batch's penalized mean gradient ``(Σw∇ℓ + Σw·λθ_S) / Σw`` (a new (P,) array)
        with what a step checks and reports: ``(gradient, all finite, ‖gradient‖,
        λ/2·‖θ_S‖²)``. One pass over P when ``S`` is contiguous (or λ = 0).
        """
        grad_sum = np.ascontiguousarray(grad_sum, dtype=np.float64)
        if self.active and self._slice is None:
            grad = (grad_sum + wsum * self.gradient(theta)) / wsum
            return (grad, bool(np.all(np.isfinite(grad))), float(np.linalg.norm(grad)),
                    self.value(theta))
        a, b = (self._slice.start, self._slice.stop) if self.active else (0, 0)
        grad = np.empty_like(grad_sum)
        finite, gsq, tsq = penalized_mean_gradient(
            grad_sum, float(wsum), np.ascontiguousarray(theta, dtype=np.float64), self.lam,
            a, b, grad)
        return grad, bool(finite), float(np.sqrt(gsq)), 0.5 * self.lam * float(tsq)

    def add_metric(self, G: np.ndarray | None, weight: float = 1.0) -> np.ndarray | None:
        """``G + weight·λ I_S`` as a new array: ``G`` of shape (P,) (diagonal) or (P, P)
        (full, or block: the diagonal lies in the blocks); a metric *sum* takes its weight
        ``Σw`` so that its mean gains ``λ``. None stays None.
        """
        if G is None or not self.active:
            return G
        out = np.array(G, dtype=np.float64, copy=True)
        if out.ndim == 1:
            out[self._slice if self._slice is not None else self.indices] += weight * self.lam
        else:
            out[self.indices, self.indices] += weight * self.lam
        return out

    def add_matvec(self, GU: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``G U + λ I_S U`` from ``GU`` and ``U``, both of shape (P, k)."""
        if not self.active:
            return GU
        out = np.array(GU, dtype=np.float64, copy=True)
        if self._slice is not None:
            out[self._slice] += self.lam * U[self._slice]
        else:
            out[self.indices] += self.lam * U[self.indices]
        return out

    def penalize(self, J: float, g: np.ndarray, G: np.ndarray | None, theta: np.ndarray):
        """Mean loss, gradient (P,) and metric ((P,), (P, P) or None) at ``theta`` with the
        penalty added: ``(J + λ/2‖θ_S‖², g + λθ_S, G + λI_S)``.
        """
        if not self.active:
            return J, g, G
        return J + self.value(theta), g + self.gradient(theta), self.add_metric(G)
