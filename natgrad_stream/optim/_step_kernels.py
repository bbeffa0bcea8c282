"""One-pass kernels of a streaming step's O(P) vector work (:meth:`~natgrad_stream.models.
penalty.L2Penalty.mean_gradient`, :meth:`~natgrad_stream.optim.rules.SGD.update_diagonal`).

A step of a wide model (10⁵ parameters and more) does a dozen whole-vector NumPy
operations after the batch's kernel: the penalty's gradient, the mean, the finiteness
checks, the norms, the whitening, the optimizer's update and the way back to θ. Each
allocates and streams P floats; at P = 10⁵ they cost more than the batch's kernel on a
1,024-row sparse batch. These kernels do the same arithmetic in one pass each, for the
cases that dominate (a contiguous penalized set; plain SGD through a diagonal whitener).
"""

from __future__ import annotations

import numpy as np

from natgrad_stream._jit import jit


@jit
def penalized_mean_gradient(grad_sum, wsum, theta, lam, a, b, out):  # pragma: no cover
    """``out = (grad_sum + wsum·λ·θ_S) / wsum`` with ``S = [a, b)``.

    Returns ``(finite, ‖out‖², ‖θ_S‖²)``: whether every entry of ``out`` is finite, and
    the squared norms (the first for the step's report, the second for the penalty's
    value ``λ/2·‖θ_S‖²``).
    """
    finite = True
    gsq = 0.0
    tsq = 0.0
    scale = wsum * lam
    for j in range(grad_sum.shape[0]):
        g = grad_sum[j]
        if a <= j < b:
            t = theta[j]
            g += scale * t
            tsq += t * t
        g = g / wsum
        if not np.isfinite(g):
            finite = False
        out[j] = g
        gsq += g * g
    return finite, gsq, tsq


@jit
def diagonal_sgd_step(phi, grad, inverse, eta, phi_out, theta_out):  # pragma: no cover
    """Plain SGD on φ through a diagonal whitener: with ``∇φ = W⁻¹ ∇θ`` (``W⁻ᵀ = W⁻¹``
    for a diagonal ``W``), ``φ' = φ − η ∇φ`` and ``θ' = W⁻¹ φ'``, into ``phi_out`` and
    ``theta_out``.

    Returns ``(finite, ‖∇φ‖²)``: whether every entry of ``θ'`` is finite, and the squared
    norm of the whitened gradient (before ``η``).
    """
    finite = True
    sq = 0.0
    for j in range(phi.shape[0]):
        gp = inverse[j] * grad[j]
        sq += gp * gp
        p = phi[j] - eta * gp
        t = inverse[j] * p
        if not np.isfinite(t):
            finite = False
        phi_out[j] = p
        theta_out[j] = t
    return finite, sq
