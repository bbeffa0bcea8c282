"""The text form of a :class:`~natgrad_stream.inference.statistics.Summary`: a table laid
out as statsmodels' ``summary()`` prints it (78 columns, a header of two columns of
measures, then one line per coefficient).
"""

from __future__ import annotations

WIDTH = 78


def _fmt(v: float, digits: int = 4) -> str:
    """A number in at most 10 characters (scientific notation when it would not fit)."""
    if v != v:  # NaN
        return "nan"
    text = f"{v:.{digits}f}"
    if len(text) > 10 or (v != 0 and abs(v) < 10 ** -digits):
        text = f"{v:.3e}"
    return text


def _pairs(left: list, right: list) -> list[str]:
    lines = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ("", "")
        b = right[i] if i < len(right) else ("", "")
        la = f"{a[0]:<21}{a[1]:>17}" if a[0] else " " * 38
        lb = f"{b[0]:<21}{b[1]:>19}" if b[0] else ""
        lines.append((la + "  " + lb).rstrip())
    return lines


def text_table(s) -> str:
    """The summary table of ``s`` (a Summary)."""
    robust = s.primary_robust
    c = s.columns(robust)
    stat = "t" if s.use_t and not robust else "z"
    lo, hi = f"[{s.alpha / 2:.3g}", f"{1 - s.alpha / 2:.3g}]"
    method = "OLS" if s.model == "linear" else "MLE"
    left = [("Model:", s.model), ("Method:", method),
            ("Converged:", "unknown" if s.converged is None else str(bool(s.converged))),
            ("Covariance Type:", s.cov_type), ("Deviance:", f"{s.deviance:.6g}")]
    if s.model == "linear":
        left.append(("Scale (sigma^2):", f"{s.scale:.6g}"))
    if s.l2:
        left.append(("L2 penalty:", f"{s.l2:g}"))
    right = [("No. Observations:", f"{s.n_obs:g}"), ("Df Residuals:", f"{s.df_resid:g}"),
             ("Df Model:", f"{s.df_model:d}"), ("Log-Likelihood:", f"{s.log_likelihood:.6g}"),
             ("AIC:", f"{s.aic:.6g}"), ("BIC:", f"{s.bic:.6g}")]
    name_w = max(14, *(len(n) + 1 for n in s.names))
    head = (f"{'':<{name_w}}{'coef':>10} {'std err':>10} {stat:>10} {f'P>|{stat}|':>10} "
            f"{lo:>10} {hi:>10}")
    width = max(WIDTH, len(head))
    lines = [f"{s.model} regression results".center(width), "=" * width,
             *_pairs(left, right), "=" * width, head, "-" * width]
    for j, name in enumerate(s.names):
        lines.append(f"{name:<{name_w}}{_fmt(s.coef[j]):>10} {_fmt(c['se'][j]):>10} "
                     f"{_fmt(c['z'][j], 3):>10} {c['p'][j]:>10.3f} "
                     f"{_fmt(c['ci_low'][j], 3):>10} {_fmt(c['ci_high'][j], 3):>10}")
    lines.append("=" * width)
    lines.extend(f"Note: {n}" for n in s.notes)
    return "\n".join(lines)
