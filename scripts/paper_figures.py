#!/usr/bin/env python
"""Reproduce Figures 1 and 2 of the paper (section 1) with the project's own pieces.

Usage::

    python scripts/paper_figures.py                 # writes scripts/results/figures/*.png
    python scripts/paper_figures.py --out DIR

Figure 1 is the badly parameterized Gaussian of section 1.1, ``x ~ N(Aθ, I)`` with
``A = [[3, 1/3], [1/3, 0]]`` (model ``gaussian-mean``), whose Fisher metric is
``G = AᵀA = [[9 + 1/9, 1], [1, 1/9]]``. Gradients and the metric come from
:meth:`GaussianMean.accumulate`; ``G^½`` from :func:`natgrad_stream.geometry.whitening.whiten`
(``scale=False, damping=0, floor=0``: the exact symmetric root of eq. 17); the data from the
``gaussian-mean`` task generator with ``θ_true = 0``.

Data are drawn antithetically (``x`` and ``2Aθ_true − x``), so the sample mean is exactly
``Aθ_true`` and the fitted optimum ``θ̂ = A⁻¹x̄`` equals ``θ_true`` to rounding, as in the
paper, whose figure uses expectations under ``p(x)``. Every function also takes any data
``X``; the paths then end, and the arrows point, at ``θ̂`` (resp. ``φ̂ = G^½θ̂``).

The KL divergence plotted in 1(b) is ``KL(N(x̄, I) ‖ q(·; θ)) = ½‖A(θ − θ̂)‖²``, from the
Gaussian fitted to the data (identity covariance, mean ``x̄``) to the model. It equals the
excess objective ``J(θ) − J(θ̂)`` exactly and, with antithetic data, ``KL(p ‖ q)`` for the
data-generating ``p = N(Aθ_true, I)``.

Figure 2 whitens a correlated 2-D Gaussian sample with ``W = Σ^-½``, where ``Σ`` is the
sample covariance. The project's whitener factors a metric ``M`` as ``WᵀW = M`` with the
symmetric root ``W = M^½``; applied to the inverse covariance (the analogue of ``G``,
section 1.3) it gives ``whiten(Σ⁻¹).matrix = Σ^-½``. (Equivalently
``whiten(Σ).inverse = Σ^-½``; ``whiten(Σ).matrix = Σ^½`` would not whiten.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from natgrad_stream.data.datasets import task_generator
from natgrad_stream.geometry.whitening import Whitener, whiten
from natgrad_stream.models import make_model

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "figures"

#: The paper's Fisher metric for the example of section 1.1 (section 1.2).
PAPER_G = np.array([[9.0 + 1.0 / 9.0, 1.0], [1.0, 1.0 / 9.0]])
#: Initial and data-generating parameters of Figure 1.
THETA_INIT = np.array([1.0, -1.0])
THETA_TRUE = np.array([0.0, 0.0])
#: Default sizes: rows of Figure 1's data, steps of each descent.
N_SAMPLES = 2000
STEEPEST_STEPS = 10_000
NATURAL_STEPS = 30
#: Natural-gradient step size (1 would land on the optimum in one step on this quadratic).
NATURAL_LR = 0.5
#: KL level used to compare the two descents in Figure 1(b).
KL_THRESHOLD = 1e-4
#: Figure 1(c)/(d) grids: half-widths of the square boxes and points per side (even, so the
#: optimum at the centre is not a grid point, where the direction would be undefined).
THETA_HALF_WIDTH = 1.5
PHI_HALF_WIDTH = 3.0
GRID_POINTS = 12
#: Figure 2: the covariance of the correlated sample (correlation 0.92) and its size.
FIG2_COVARIANCE = np.array([[3.0, 1.6], [1.6, 1.0]])
FIG2_SAMPLES = 1000


# -- Figure 1: the model, its data, its objective -----------------------------------------------
def paper_data(n_samples: int = N_SAMPLES, *, seed: int = 0, antithetic: bool = True):
    """Data ``x ~ N(Aθ_true, I)`` from the ``gaussian-mean`` task generator.

    Parameters
    ----------
    n_samples : int
        Rows (even when ``antithetic``).
    seed : int
    antithetic : bool
        Return ``x`` and its reflection ``2Aθ_true − x`` (half the rows each), so the
        sample mean is exactly ``Aθ_true``.

    Returns
    -------
    X : ndarray, shape (n_samples, 2), float64
    """
    n = int(n_samples)
    if n < 2 or (antithetic and n % 2):
        raise ValueError(f"n_samples must be >= 2 (and even when antithetic), got {n_samples}")
    gen = task_generator("gaussian-mean")
    params = gen.true_params(2, seed)
    rng = np.random.default_rng([seed, 1])
    X, _ = gen.sample_chunk(params, rng, n // 2 if antithetic else n)
    if antithetic:
        mu = np.asarray(params["mixing"]) @ np.asarray(params["theta"])
        X = np.concatenate([X, 2.0 * mu - X])
    return np.ascontiguousarray(X, dtype=np.float64)


class PaperProblem:
    """The objective ``J(θ)`` of eq. 2 on data ``X``, through the ``gaussian-mean`` model.

    Parameters
    ----------
    X : ndarray, shape (n, 2), optional
        Data; default :func:`paper_data`.

    Attributes
    ----------
    model : GaussianMean
    G : ndarray, shape (2, 2)
        Batch-average model Fisher from ``accumulate(metric="model")`` (``AᵀA``).
    whitener : Whitener
        ``W = G^½`` (``matrix``) and ``G^-½`` (``inverse``).
    theta_hat : ndarray, shape (2,)
        Minimizer of ``J`` on ``X``.
    """

    def __init__(self, X=None):
        X = paper_data() if X is None else np.asarray(X)
        self.model = make_model("gaussian-mean", 2)
        self.X = self.model.check_X(X)
        self._ws = self.model.new_workspace("full", n_threads=1)
        self.model.accumulate(self.X, None, None, THETA_INIT, metric="model", structure="full",
                              ws=self._ws, parallel=False)
        self.G = self._ws.fisher / self.X.shape[0]
        self.whitener: Whitener = whiten(self.G, scale=False, damping=0.0, floor=0.0)
        # J is quadratic with Hessian G: one full natural step from anywhere lands on θ̂.
        zero = np.zeros(2)
        self.theta_hat = zero - self.whitener.natural_gradient(self.gradient(zero))

    @property
    def mixing(self) -> np.ndarray:
        """``A``, shape (2, 2)."""
        return self.model.mixing

    def gradient(self, theta) -> np.ndarray:
        """``∇θJ``, shape (2,): the batch mean of the per-sample NLL gradients."""
        _, wsum = self.model.accumulate(self.X, None, None, np.asarray(theta, dtype=np.float64),
                                        metric=None, structure="full", ws=self._ws,
                                        parallel=False)
        return self._ws.grad / wsum

    def kl(self, thetas) -> np.ndarray:
        """``KL(N(x̄, I) ‖ q(·; θ)) = ½‖A(θ − θ̂)‖²``, shape (...,) for ``thetas`` (..., 2)."""
        r = (np.asarray(thetas, dtype=np.float64) - self.theta_hat) @ self.mixing.T
        return 0.5 * np.sum(r * r, axis=-1)


def _problem(problem):
    if problem is None:
        return PaperProblem()
    if not isinstance(problem, PaperProblem):
        raise TypeError(f"problem must be a PaperProblem, got {type(problem).__name__}")
    return problem


def _positive(name, v):
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return float(v)


def descent_paths(problem: PaperProblem | None = None, *, steepest_steps: int = STEEPEST_STEPS,
                  natural_steps: int = NATURAL_STEPS, lr_steepest: float | None = None,
                  lr_natural: float = NATURAL_LR, theta_init=THETA_INIT) -> dict:
    """Figure 1(a): parameter paths of steepest and natural gradient descent.

    Steepest descent takes ``θ ← θ − η∇θJ`` with default ``η = 1/λ_max(G)``, the largest
    step that does not overshoot along the stiffest direction. Natural descent follows the
    paper's algorithm of section 1.4: ``φ = G^½θ``, ``φ ← φ − η∇φJ``, ``θ = G^-½φ``
    (identical to ``θ ← θ − ηG⁻¹∇θJ``, eq. 25).

    Parameters
    ----------
    problem : PaperProblem, optional
    steepest_steps, natural_steps : int
    lr_steepest : float, optional
    lr_natural : float
    theta_init : array_like, shape (2,)

    Returns
    -------
    dict
        ``steepest`` (steepest_steps + 1, 2) and ``natural`` (natural_steps + 1, 2) paths
        (row 0 is ``theta_init``), ``theta_hat`` (2,), ``lr_steepest``, ``lr_natural``.
    """
    pb = _problem(problem)
    if lr_steepest is None:
        lr_steepest = 1.0 / float(np.linalg.eigvalsh(pb.G)[-1])
    lr_steepest = _positive("lr_steepest", lr_steepest)
    lr_natural = _positive("lr_natural", lr_natural)
    for name, v in (("steepest_steps", steepest_steps), ("natural_steps", natural_steps)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    theta0 = np.asarray(theta_init, dtype=np.float64)
    if theta0.shape != (2,) or not np.all(np.isfinite(theta0)):
        raise ValueError(f"theta_init must be 2 finite numbers, got {theta_init!r}")

    steep = np.empty((int(steepest_steps) + 1, 2))
    steep[0] = theta0
    for t in range(1, steep.shape[0]):
        steep[t] = steep[t - 1] - lr_steepest * pb.gradient(steep[t - 1])

    Wn = pb.whitener
    nat = np.empty((int(natural_steps) + 1, 2))
    nat[0] = theta0
    for t in range(1, nat.shape[0]):
        phi = Wn.phi(nat[t - 1])
        phi = phi - lr_natural * Wn.grad_phi(pb.gradient(nat[t - 1]))
        nat[t] = Wn.theta(phi)
    return {"steepest": steep, "natural": nat, "theta_hat": pb.theta_hat.copy(),
            "lr_steepest": lr_steepest, "lr_natural": lr_natural}


def kl_curves(paths: dict, problem: PaperProblem | None = None) -> dict:
    """Figure 1(b): ``KL(N(x̄, I) ‖ q(·; θ_t))`` along each path.

    Parameters
    ----------
    paths : dict
        Output of :func:`descent_paths` (on the same ``problem``).
    problem : PaperProblem, optional

    Returns
    -------
    dict
        ``steepest`` and ``natural``: KL after ``t`` steps, shapes (steps + 1,).
    """
    pb = _problem(problem)
    return {k: pb.kl(paths[k]) for k in ("steepest", "natural")}


def steps_to_reach(curve, threshold: float = KL_THRESHOLD) -> int | None:
    """First step index at which ``curve`` is below ``threshold`` (None if never)."""
    below = np.flatnonzero(np.asarray(curve) < threshold)
    return int(below[0]) if below.size else None


def gradient_field(problem: PaperProblem | None = None, *, whitened: bool = False,
                   grid_points: int = GRID_POINTS, half_width: float | None = None) -> dict:
    """Figure 1(c)/(d): the descent direction ``−∇J`` over a square grid.

    Parameters
    ----------
    problem : PaperProblem, optional
    whitened : bool
        False: grid in θ, arrows ``−∇θJ`` (eq. 4). True: grid in ``φ = G^½θ``, arrows
        ``−∇φJ = −G^-½∇θJ(G^-½φ)`` (eqs. 18-21).
    grid_points : int
        Points per side.
    half_width : float, optional
        Half-width of the box centred on the origin (default 1.5 in θ, 3 in φ).

    Returns
    -------
    dict
        ``points`` (g, g, 2) grid coordinates, ``arrows`` (g, g, 2) ``−∇J`` in the same
        coordinates, ``target`` (2,) the optimum there (``θ̂`` or ``φ̂ = G^½θ̂``),
        ``start`` (2,) ``θ_init`` or ``φ_init``.
    """
    pb = _problem(problem)
    g = int(grid_points)
    if g < 2:
        raise ValueError(f"grid_points must be >= 2, got {grid_points}")
    if half_width is None:
        half_width = PHI_HALF_WIDTH if whitened else THETA_HALF_WIDTH
    h = _positive("half_width", half_width)
    axis = np.linspace(-h, h, g)
    points = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)
    arrows = np.empty_like(points)
    Wn = pb.whitener
    for i in range(g):
        for j in range(g):
            p = points[i, j]
            if whitened:
                arrows[i, j] = -Wn.grad_phi(pb.gradient(Wn.theta(p)))
            else:
                arrows[i, j] = -pb.gradient(p)
    if whitened:
        return {"points": points, "arrows": arrows, "target": Wn.phi(pb.theta_hat),
                "start": Wn.phi(THETA_INIT)}
    return {"points": points, "arrows": arrows, "target": pb.theta_hat.copy(),
            "start": THETA_INIT.copy()}


def angles_to_target(points, arrows, target) -> np.ndarray:
    """Angle (radians) between each arrow and the direction from its point to ``target``.

    Parameters
    ----------
    points, arrows : ndarray, shape (..., 2)
    target : ndarray, shape (2,)

    Returns
    -------
    ndarray, shape (...,)
        In ``[0, π]``; NaN where the point is the target or the arrow is zero.
    """
    d = np.asarray(target, dtype=np.float64) - np.asarray(points, dtype=np.float64)
    a = np.asarray(arrows, dtype=np.float64)
    cross = a[..., 0] * d[..., 1] - a[..., 1] * d[..., 0]
    dot = np.sum(a * d, axis=-1)
    ang = np.abs(np.arctan2(cross, dot))
    degenerate = (np.hypot(*np.moveaxis(d, -1, 0)) == 0) | (np.hypot(*np.moveaxis(a, -1, 0)) == 0)
    return np.where(degenerate, np.nan, ang)


def perpendicular_deviation(path, start, end) -> np.ndarray:
    """Distance of each point of ``path`` (m, 2) from the line through ``start`` and ``end``."""
    u = np.asarray(end, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    norm = np.hypot(*u)
    if norm == 0:
        raise ValueError("start and end coincide: the line is undefined")
    d = np.asarray(path, dtype=np.float64) - start
    return np.abs(d[:, 0] * u[1] - d[:, 1] * u[0]) / norm


# -- Figure 2 -----------------------------------------------------------------------------------
def whitening_sample(n_samples: int = FIG2_SAMPLES, *, seed: int = 0,
                     covariance=FIG2_COVARIANCE) -> dict:
    """Figure 2: a correlated 2-D Gaussian sample and its symmetric whitening.

    Parameters
    ----------
    n_samples : int
    seed : int
    covariance : array_like, shape (2, 2)
        Covariance of the zero-mean distribution the sample is drawn from.

    Returns
    -------
    dict
        ``x`` (n, 2) the sample, ``sigma`` (2, 2) its covariance (``np.cov``, centred),
        ``W`` (2, 2) ``= whiten(Σ⁻¹, scale=False, damping=0).matrix = Σ^-½``, ``y`` (n, 2)
        ``= x Wᵀ``, whose sample covariance is the identity.
    """
    C = np.asarray(covariance, dtype=np.float64)
    if C.shape != (2, 2) or not np.allclose(C, C.T) or np.any(np.linalg.eigvalsh(C) <= 0):
        raise ValueError(f"covariance must be a symmetric positive-definite 2×2 matrix, got {C}")
    if int(n_samples) < 3:
        raise ValueError(f"n_samples must be >= 3, got {n_samples}")
    rng = np.random.default_rng([seed, 2])
    x = rng.multivariate_normal(np.zeros(2), C, size=int(n_samples))
    sigma = np.cov(x, rowvar=False)
    W = whiten(np.linalg.inv(sigma), scale=False, damping=0.0, floor=0.0).matrix
    return {"x": x, "sigma": sigma, "W": W, "y": x @ W.T}


# -- rendering ----------------------------------------------------------------------------------
def _unit(v):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def render(out_dir=DEFAULT_OUT, *, problem: PaperProblem | None = None) -> list[Path]:
    """Draw ``figure1.png`` (panels a-d) and ``figure2.png`` (panels a-b) into ``out_dir``.

    Returns
    -------
    list of Path
        The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pb = _problem(problem)
    paths = descent_paths(pb)
    kls = kl_curves(paths, pb)
    red, blue = "tab:red", "tab:blue"

    fig = Figure(figsize=(11, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax_a, ax_b), (ax_c, ax_d) = fig.subplots(2, 2)

    # (a) paths over contours of the KL
    t1, t2 = np.meshgrid(np.linspace(-0.5, 1.5, 201), np.linspace(-1.5, 0.5, 201))
    ax_a.contour(t1, t2, pb.kl(np.stack([t1, t2], -1)), levels=np.logspace(-4, 1, 11),
                 colors="0.8", linewidths=0.7)
    s, n = paths["steepest"], paths["natural"]
    ax_a.plot(s[:, 0], s[:, 1], "-", color=red, lw=1.5,
              label=f"steepest descent (η = {paths['lr_steepest']:.3f}, {len(s) - 1} steps)")
    ax_a.plot(s[:20, 0], s[:20, 1], ".", color=red, ms=5)
    ax_a.plot(n[:, 0], n[:, 1], "o-", color=blue, ms=4, lw=1.5,
              label=f"natural gradient (η = {paths['lr_natural']:g}, {len(n) - 1} steps)")
    ax_a.plot(*THETA_INIT, "ks", ms=7, label=r"$\theta_{init}$")
    ax_a.plot(*THETA_TRUE, "k*", ms=12, label=r"$\theta_{true}$")
    ax_a.set(xlabel=r"$\theta_1$", ylabel=r"$\theta_2$", aspect="equal",
             xlim=(-0.5, 1.5), ylim=(-1.5, 0.5), title="(a) parameter descent paths")
    ax_a.legend(loc="upper right", fontsize=8)

    # (b) KL vs steps
    for key, color, label in (("steepest", red, "steepest descent"),
                              ("natural", blue, "natural gradient")):
        k = kls[key]
        steps = np.arange(len(k))
        keep = (steps >= 1) & (k > 1e-14)
        ax_b.loglog(steps[keep], k[keep], "-", color=color, lw=1.8, label=label)
        hit = steps_to_reach(k)
        if hit is not None:
            ax_b.plot(hit, k[hit], "o", color=color, ms=6)
    ax_b.axhline(KL_THRESHOLD, color="0.5", ls=":", lw=1,
                 label=f"KL = {KL_THRESHOLD:g} (reached at ●)")
    ax_b.set(xlabel="number of gradient descent steps",
             ylabel=r"KL$(\mathcal{N}(\bar x, I)\,\|\,q(x;\theta))$", ylim=(1e-14, 10),
             title="(b) KL divergence from data to fit model")
    ax_b.legend(fontsize=8)

    # (c), (d) gradient fields (arrow directions, unit length)
    for ax, whitened, sym in ((ax_c, False, r"\theta"), (ax_d, True, r"\phi")):
        f = gradient_field(pb, whitened=whitened)
        P, U = f["points"], _unit(f["arrows"])
        h = P[..., 0].max()
        c1, c2 = np.meshgrid(np.linspace(-h, h, 201), np.linspace(-h, h, 201))
        grid = np.stack([c1, c2], -1)
        thetas = grid @ pb.whitener.inverse.T if whitened else grid
        ax.contour(c1, c2, pb.kl(thetas), levels=np.logspace(-3, 1.5, 10), colors="0.8",
                   linewidths=0.7)
        ax.quiver(P[..., 0], P[..., 1], U[..., 0], U[..., 1], color="k", angles="xy",
                  scale_units="xy", scale=1.6 / (2 * h / (P.shape[0] - 1)), width=0.004)
        ax.plot(*f["target"], "*", color="tab:green", ms=14,
                label=rf"${sym}_{{true}}$" + (r" $= G^{1/2}\theta_{true}$" if whitened else ""))
        ax.plot(*f["start"], "s", color="tab:orange", ms=7,
                label=rf"${sym}_{{init}}$")
        ax.set(xlabel=rf"${sym}_1$", ylabel=rf"${sym}_2$", aspect="equal",
               xlim=(-1.1 * h, 1.1 * h), ylim=(-1.1 * h, 1.1 * h))
        ax.legend(loc="lower left", fontsize=8, framealpha=1)
    ax_c.set_title(r"(c) $-\nabla_\theta J$ (directions) in $\theta$")
    ax_d.set_title(r"(d) $-\nabla_\phi J$ (directions) in $\phi = G^{1/2}\theta$")
    fig1 = out / "figure1.png"
    fig.savefig(fig1, dpi=110, bbox_inches="tight", pad_inches=0.15)

    # Figure 2
    w = whitening_sample()
    fig = Figure(figsize=(10, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_x, ax_y = fig.subplots(1, 2)
    lim = 1.05 * max(np.abs(w["x"]).max(), np.abs(w["y"]).max())
    for ax, pts, (a, b), title in (
            (ax_x, w["x"], ("x_1", "x_2"), "(a) samples $x$"),
            (ax_y, w["y"], ("y_1", "y_2"), r"(b) whitened $y = W x = \Sigma^{-1/2} x$")):
        ax.plot(pts[:, 0], pts[:, 1], ".", color="k", ms=2.5, alpha=0.6)
        cov = np.cov(pts, rowvar=False)
        ax.set(xlabel=f"${a}$", ylabel=f"${b}$", aspect="equal", xlim=(-lim, lim),
               ylim=(-lim, lim), title=title)
        ax.text(0.03, 0.97, "sample covariance\n" + np.array2string(cov, precision=3),
                transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    fig2 = out / "figure2.png"
    fig.savefig(fig2, dpi=110, bbox_inches="tight", pad_inches=0.15)
    return [fig1, fig2]


def main(argv=None) -> None:
    """Command line: ``python scripts/paper_figures.py [--out DIR]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output directory (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    for p in render(args.out):
        print(p)


if __name__ == "__main__":
    main()
