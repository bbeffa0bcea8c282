"""Draw a run's training log: what ``natgrad-stream plot RUN`` writes.

One figure of three panels sharing the samples axis, from ``RUN/metrics.jsonl``:

1. loss against samples (the progress records' interval means, the loss of each full pass
   and L-BFGS round, and the validation loss when the log has ``validation`` records);
2. rows per second against samples;
3. each metric refresh (re-whitening): its condition number (log scale, coloured by the
   refresh's reason, failed ones as red crosses) and, on a second axis, the drift that
   triggered it when measured.

Refreshes are also marked by thin vertical lines in every panel, rollbacks by red dotted
lines and resumptions by dashed ones. The samples axis is logarithmic when the logged
samples span more than a factor of :data:`LOG_X_RANGE`.

Matplotlib is optional (the ``plot`` extra): it is imported here, lazily, and drawn with
the Agg backend through the object API, never touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from natgrad_stream.errors import RunDirectoryError

METRICS = "metrics.jsonl"
DEFAULT_NAME = "plot.png"
#: A samples (or rows/s, or positive loss) range wider than this factor is drawn on a log axis.
LOG_X_RANGE = 100.0
LOG_Y_RANGE = 100.0
#: Validation measures drawn on the loss panel's second axis when the records hold them
#: (classifiers' ``evaluate`` measures), with their legend labels.
VALIDATION_SCORES = (("accuracy", "validation accuracy"), ("auc", "validation AUC"))
INSTALL_HINT = 'pip install "natgrad-stream[plot]"'
_REASON_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown",
                  "tab:pink", "tab:olive", "tab:cyan")


class PlotUnavailableError(ImportError, ValueError):
    """Matplotlib is not installed. An :class:`ImportError`, and a :class:`ValueError` so
    that the command line reports it as bad usage (exit status 2) in one line.
    """


def _matplotlib():
    """``(Figure, FigureCanvasAgg, Line2D)``, or :class:`PlotUnavailableError` naming the
    extra to install.
    """
    try:
        import matplotlib  # noqa: F401  (first: a cached submodule would hide its absence)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as exc:
        raise PlotUnavailableError(
            f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from exc
    return Figure, FigureCanvasAgg, Line2D


def read_metrics(run_dir) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, in order.

    A last line cut short (a run being written, or killed mid-write) is skipped; any other
    line that is not a JSON object is an error.

    Raises
    ------
    RunDirectoryError
        No run directory or no ``metrics.jsonl`` in it, or a corrupt line.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise RunDirectoryError(f"{run_dir}: no {METRICS} (not a run directory, or a run "
                                "that has not started logging)")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1:  # no newline after it: a partial write
                continue
            raise RunDirectoryError(f"{path}: line {i + 1} is not a JSON object")
        records.append(record)
    return records


def _num(value):
    """A finite float, or None (missing, null, non-numeric, non-finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records, key):
    """``(samples, values)`` for records with both finite; a ``nan`` pair is put where the
    samples go backwards (a rollback) so a line is not drawn back over itself.
    """
    xs, ys = [], []
    last = None
    for r in records:
        x, y = _num(r.get("samples")), _num(r.get(key))
        if x is None or y is None:
            continue
        if last is not None and x < last:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(x)
        ys.append(y)
        last = x
    return xs, ys


def _refreshes(records) -> list[dict]:
    """Refresh records: top-level ``rewhiten`` ones, and those nested in L-BFGS ``round``
    records unless logged on their own too.
    """
    out = [r for r in records if r.get("event") == "rewhiten"]
    seen = {(r.get("samples"), r.get("reason")) for r in out}
    for r in records:
        nested = r.get("rewhiten") if r.get("event") == "round" else None
        if isinstance(nested, dict) and (nested.get("samples", r.get("samples")),
                                         nested.get("reason", "round")) not in seen:
            out.append({"reason": "round", "samples": r.get("samples"), **nested})
    return out


def _wide(values, factor, *, skip_nonpositive=False) -> bool:
    """Whether the finite ``values`` are positive (or ``skip_nonpositive``: those that
    are) and span more than ``factor``: a log axis then reads better.
    """
    finite = [v for v in values if math.isfinite(v)]
    pos = [v for v in finite if v > 0]
    if len(pos) < 2 or (len(pos) < len(finite) and not skip_nonpositive):
        return False
    return max(pos) / min(pos) > factor


def _title(run_dir: Path, records) -> str:
    start = next((r for r in records if r.get("event") == "start"), {})
    model = (start.get("model") or {}).get("name") if isinstance(start.get("model"),
                                                                  dict) else None
    opts = start.get("options") if isinstance(start.get("options"), dict) else {}
    parts = [run_dir.resolve().name]
    if model:
        parts.append(f"model {model}")
    if opts.get("metric"):
        parts.append(f"metric {opts['metric']}")
    end = next((r for r in reversed(records) if r.get("event") in ("end", "error")), None)
    if end is None:
        parts.append("(no end record: running or killed)")
    elif end.get("event") == "error":
        parts.append(f"(stopped by {end.get('type', 'an error')})")
    else:
        which = "train" if "train_loss" in end else "running"
        loss = _num(end.get(f"{which}_loss"))
        bits = [f"{int(end['samples']):,} samples" if _num(end.get("samples")) else None,
                f"{which} loss {loss:.6g}" if loss is not None else None,
                f"{end['seconds']:.3g} s" if _num(end.get("seconds")) is not None else None,
                "interrupted" if end.get("interrupted") else None,
                "converged" if end.get("converged") else None]
        parts.append("(" + ", ".join(b for b in bits if b) + ")")
    return f"{parts[0]} — {', '.join(parts[1:-1])} {parts[-1]}".replace(" — (", " (")


def plot_run(run_dir, out=None) -> Path:
    """Draw the training log of ``run_dir`` (:func:`draw_run`) into ``out`` (default
    ``run_dir/plot.png``).

    The format follows ``out``'s suffix (PNG when it has none); the file is written
    atomically (a temporary file renamed over it).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    RunDirectoryError
        No ``metrics.jsonl``, or no progress records in it.
    PlotUnavailableError
        Matplotlib is not installed.
    ValueError
        ``out`` has a suffix matplotlib cannot write.
    """
    run_dir = Path(run_dir)
    fig = draw_run(run_dir)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out) if out is not None else run_dir / DEFAULT_NAME
    fmt = out.suffix[1:].lower() or "png"
    canvas = FigureCanvasAgg(fig)
    supported = canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"{out}: cannot write .{fmt} files (one of "
                         f"{', '.join('.' + k for k in sorted(supported))})")
    fd, tmp = tempfile.mkstemp(prefix=".plot-", suffix=f".{fmt}.tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _x_limits(xs, log_x: bool):
    """The samples axis's limits: the span of the drawn series ``xs`` (where the data
    start and end) with a 2% margin, in log space on a log axis.
    """
    xs = [x for x in xs if math.isfinite(x) and not (log_x and x <= 0)]
    lo, hi = min(xs), max(xs)
    if log_x:
        a, b = math.log(lo), math.log(hi)
        pad = 0.02 * (b - a) if b > a else 0.1
        return math.exp(a - pad), math.exp(b + pad)
    pad = 0.02 * (hi - lo) if hi > lo else max(abs(lo) * 0.05, 1.0)
    return lo - pad, hi + pad


def draw_run(run_dir):
    """The figure of ``run_dir``'s training log (a matplotlib ``Figure``, not drawn on any
    canvas): what :func:`plot_run` writes.

    Raises
    ------
    RunDirectoryError
        No ``metrics.jsonl``, or no progress records in it.
    PlotUnavailableError
        Matplotlib is not installed.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    progress = [r for r in records if r.get("event") == "progress"]
    px, ploss = _series(progress, "loss")
    if not px:
        raise RunDirectoryError(f"{run_dir / METRICS}: no progress records to plot (a run "
                                "shorter than --log-every, or one that has just started)")
    Figure, _, Line2D = _matplotlib()
    fig = Figure(figsize=(10, 9), layout="constrained")
    ax_loss, ax_rate, ax_cond = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.6, 2]})

    passes = [r for r in records if r.get("event") == "pass"]
    rounds = [r for r in records if r.get("event") == "round"]
    validation = [r for r in records if r.get("event") == "validation"]
    refreshes = _refreshes(records)
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    resumes = [r for r in records if r.get("event") == "start"][1:]

    # the axis spans the drawn series (losses, rows/s): refreshes and event lines outside
    # it (the first re-whitenings come before the first progress record) are not drawn
    data_x = [x for x in px if math.isfinite(x)]
    for group in (passes, rounds, validation):
        data_x += [v for v in (_num(r.get("samples")) for r in group) if v is not None]
    log_x = _wide(data_x, LOG_X_RANGE, skip_nonpositive=True)

    def keep(xs, ys):  # drop samples = 0 on a log axis
        if not log_x:
            return xs, ys
        pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if not x <= 0]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # (1) loss: training (batches while streaming, the whole data in later passes),
    # validation, and the validation accuracy of classifiers on a second axis
    ax_loss.plot(*keep(px, ploss), "-", color="tab:blue", lw=1.4, marker="." if
                 len(px) <= 60 else None,
                 label="training loss (interval mean of batch losses)")
    all_loss = list(ploss)
    for group, key, style, color, label in (
            (passes, "loss", "o-", "tab:green", "training loss (whole-data pass)"),
            (rounds, "loss", "s-", "tab:purple", "training loss (L-BFGS round)"),
            (validation, "loss", "D-", "tab:orange", "validation loss")):
        xs, ys = keep(*_series(group, key))
        if xs:
            ax_loss.plot(xs, ys, style, color=color, ms=5, lw=1.2, label=label)
            all_loss += ys
    if _wide(all_loss, LOG_Y_RANGE):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    scores = [(key, label) for key, label in VALIDATION_SCORES
              if any(_num(r.get(key)) is not None for r in validation)]
    ax_score = ax_loss.twinx() if scores else None
    for (key, label), style in zip(scores, ("^--", "v:"), strict=False):
        ax_score.plot(*keep(*_series(validation, key)), style, color="tab:red", ms=5,
                      lw=1.0, label=label)
    if ax_score is not None:
        ax_score.set_ylabel(" / ".join(label for _, label in scores), color="tab:red")
        ax_score.tick_params(axis="y", colors="tab:red")

    # (2) rows per second
    rx, rate = keep(*_series(progress, "rows_per_s"))
    ax_rate.plot(rx, rate, "-", color="tab:gray", lw=1.2, marker="." if len(rx) <= 60 else None)
    if _wide(rate, LOG_Y_RANGE):
        ax_rate.set_yscale("log")
    ax_rate.set_ylabel("rows / s")

    # (3) refreshes: condition number and drift
    reasons = []
    for r in refreshes:
        if r.get("reason") not in reasons:
            reasons.append(r.get("reason"))
    for i, reason in enumerate(reasons):
        mine = [r for r in refreshes if r.get("reason") == reason and r.get("ok", True)]
        xs, ys = keep(*_series(mine, "condition_number"))
        pos = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
        if pos:
            ax_cond.plot([p[0] for p in pos], [p[1] for p in pos], "o",
                         color=_REASON_COLORS[i % len(_REASON_COLORS)], ms=6,
                         label=f"condition number ({reason or 'refresh'})")
    raw = [(x, y) for x, y in zip(*keep(*_series(refreshes, "raw_condition_number")),
                                  strict=True) if y > 0]
    floored = any(_num(r.get("raw_condition_number")) and _num(r.get("condition_number"))
                  and abs(r["raw_condition_number"] / r["condition_number"] - 1) > 0.01
                  for r in refreshes)
    if raw and floored:  # drawn only where damping or the floor changed it visibly
        ax_cond.plot([p[0] for p in raw], [p[1] for p in raw], "o", mfc="none",
                     color="black", ms=9, mew=0.8, label="raw condition number (before floor)")
    failed = [r for r in refreshes if r.get("ok") is False]
    fx = [v for v in (_num(r.get("samples")) for r in failed) if v is not None]
    if fx:
        ymark = [(_num(r.get("condition_number")) or 1.0) for r in failed
                 if _num(r.get("samples")) is not None]
        ax_cond.plot(*keep(fx, [y if y > 0 else 1.0 for y in ymark]), "x", color="red",
                     ms=9, mew=2, label="failed refresh")
    if ax_cond.lines:
        ax_cond.set_yscale("log")
    ax_cond.set_ylabel("condition number")
    dx, drift = keep(*_series([r for r in refreshes if r.get("drift") is not None], "drift"))
    if dx:
        ax_drift = ax_cond.twinx()
        ax_drift.plot(dx, drift, "^", color="tab:red", ms=6, label="drift")
        ax_drift.set_ylabel("drift", color="tab:red")
        ax_drift.tick_params(axis="y", colors="tab:red")
        ax_drift.legend(loc="upper right", fontsize=8)
        ax_drift.set_ylim(bottom=0)
        drift_note = ""
    else:
        drift_note = " (no drift measured)"
    ax_cond.set_title(f"metric refreshes: {len(refreshes)}{drift_note}", fontsize=10)
    if ax_cond.lines:
        ax_cond.legend(loc="best", fontsize=8)

    # event lines across the panels
    for ax in (ax_loss, ax_rate, ax_cond):
        for r in refreshes:
            x = _num(r.get("samples"))
            if x is not None and not (log_x and x <= 0):
                ax.axvline(x, color="red" if r.get("ok") is False else "0.75", lw=0.7,
                           zorder=0)
        for group, style, color in ((rollbacks, ":", "red"), (resumes, "--", "black")):
            for r in group:
                x = _num(r.get("samples"))
                if x is not None and not (log_x and x <= 0):
                    ax.axvline(x, color=color, ls=style, lw=1.2, zorder=1)
        ax.grid(True, which="major", alpha=0.3)
    # legend entries for the event lines (proxy artists, drawn nowhere)
    handles, labels = ax_loss.get_legend_handles_labels()
    if ax_score is not None:
        more = ax_score.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if refreshes:
        handles.append(Line2D([], [], color="0.75", lw=0.7))
        labels.append("metric refresh")
    if rollbacks:
        handles.append(Line2D([], [], color="red", ls=":", lw=1.2))
        labels.append("rollback")
    if resumes:
        handles.append(Line2D([], [], color="black", ls="--", lw=1.2))
        labels.append("resumed")
    # (above the twin axis, which would otherwise draw over it; placed where it hides
    # the fewest points)
    legend = (ax_score or ax_loss).legend(handles, labels, loc="best", fontsize=8)
    legend.set_zorder(10)

    if log_x:
        ax_cond.set_xscale("log")
    ax_cond.set_xlim(*_x_limits(data_x, log_x))  # shared by the three panels
    ax_cond.set_xlabel("samples (rows seen)" + (", log scale" if log_x else ""))
    fig.suptitle(_title(run_dir, records), fontsize=11)
    return fig
