"""The ``natgrad-stream`` command line.

Subcommands: ``make-data``, ``fit``, ``evaluate``, ``params``, ``demo``. Machine-readable
results go to stdout as one JSON object on the last line; progress and messages go to
stderr. Exit status: 0 success, 1 failure in learning, 2 bad input or usage, 130 stopped
by a signal (after writing a resumable checkpoint).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import warnings
from pathlib import Path

from natgrad_stream import __version__
from natgrad_stream._constants import DEFAULT_BATCH_SIZE, DEFAULT_DAMPING, DEFAULT_EIGEN_FLOOR
from natgrad_stream.errors import CheckpointError, DataError, RunDirectoryError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGNAL = 0, 1, 2, 130
#: Mirrors of the registries (kept literal so that ``--help`` imports no kernels; a test
#: checks them against ``natgrad_stream.models`` and ``natgrad_stream.data.datasets``).
MODEL_CHOICES = ("logistic", "linear", "poisson", "softmax", "gaussian", "gaussian-mean",
                 "ising", "ica", "mlp")
TASK_CHOICES = MODEL_CHOICES
METRIC_CHOICES = ("model", "empirical", "monte-carlo", "loss-gradient", "energy",
                  "gauss-newton", "amari")
STRUCTURE_CHOICES = ("full", "diagonal", "block")
OPTIMIZER_CHOICES = ("sgd", "momentum", "adam")
#: ``--optimizer lbfgs`` selects the batch L-BFGS in the natural space (natgrad_stream.lbfgs),
#: not a streaming optimizer of φ, so it is not in ``OPTIMIZER_CHOICES``.
LBFGS = "lbfgs"


def _print_json(obj: dict) -> None:
    from natgrad_stream.callbacks import json_clean

    sys.stdout.write(json.dumps(json_clean(obj)) + "\n")
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fisher_every(text: str):
    return "auto" if text == "auto" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="natgrad-stream",
        description="Natural-gradient learning on chunked Zarr data streams.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="write a synthetic, ill-conditioned Zarr v3 dataset")
    p.add_argument("out", metavar="OUT.zarr")
    p.add_argument("--task", required=True, choices=TASK_CHOICES)
    p.add_argument("--rows", required=True, type=_positive_int)
    p.add_argument("--features", required=True, type=_positive_int)
    p.add_argument("--chunk-rows", type=_positive_int, default=65536)
    p.add_argument("--test-rows", type=_nonnegative_int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("fit", help="learn a model from a Zarr group by natural gradient")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--model", choices=MODEL_CHOICES,
                   help="model family (required unless --resume)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--x", default="X", metavar="NAME", help="features array (default X)")
    p.add_argument("--y", default="y", metavar="NAME", help="targets array (default y)")
    p.add_argument("--w", default=None, metavar="NAME", help="optional sample-weight array")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="total passes, default 1 (a resumed run continues up to this count)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"rows per batch (default {DEFAULT_BATCH_SIZE}; lbfgs: rows per "
                        "evaluation batch, default 65536)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", choices=METRIC_CHOICES, default=None,
                   help="metric kind (default: the model's own; see the README)")
    p.add_argument("--structure", choices=STRUCTURE_CHOICES, default="full",
                   help="full, diagonal (eq. 34) or block-diagonal by parameter group")
    p.add_argument("--mc-samples", type=_positive_int, default=1, metavar="K",
                   help="targets sampled per row for --metric monte-carlo")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES + (LBFGS,), default="sgd",
                   help="optimizer of φ; lbfgs: batch L-BFGS in the natural space, "
                        "re-whitened every round (paper section 2.7)")
    p.add_argument("--lbfgs-rounds", type=_positive_int, default=None, metavar="R",
                   help="lbfgs: total rounds (re-whitenings), default 10 (a resumed run "
                        "continues up to this count)")
    p.add_argument("--lbfgs-iters", type=_positive_int, default=None, metavar="N",
                   help="lbfgs: L-BFGS iterations per round at most (default 25)")
    p.add_argument("--lbfgs-tol", type=_nonnegative_float, default=None, metavar="T",
                   help="lbfgs: stop when a round improves the loss by at most T, relative "
                        "(default 1e-12)")
    p.add_argument("--lbfgs-gtol", type=_nonnegative_float, default=None, metavar="T",
                   help="lbfgs: stop when max |natural gradient in φ| <= T (default 1e-7)")
    p.add_argument("--window", type=_positive_int, default=None, metavar="CHUNKS",
                   help="lbfgs: evaluate each round on this many chunks drawn by the seed "
                        "(default: all the data)")
    p.add_argument("--lr", type=float, default=None, help="step-size scale")
    p.add_argument("--step-schedule", choices=("harmonic", "sqrt", "constant"), default=None)
    p.add_argument("--rewhiten-every", type=_positive_int, default=None, metavar="N",
                   help="re-whiten every N samples (default: geometric spacing + drift)")
    p.add_argument("--rewhiten", default=None,
                   help="schedule spec: auto, never, every:N, geometric:F, drift:T")
    p.add_argument("--whitening", choices=("eigh", "ridge", "robust"), default="eigh")
    p.add_argument("--damping", type=float, default=None,
                   help=f"relative damping ε of the whitener (ridge ε of eq. 36, eq. 35's ε); "
                        f"default {DEFAULT_DAMPING} or the model's own")
    p.add_argument("--floor", type=float, default=DEFAULT_EIGEN_FLOOR,
                   help="eigenvalue floor relative to the largest (eigh, robust)")
    p.add_argument("--half-life", default="auto",
                   help="running-metric half-life in samples, 'auto' or 'none'")
    p.add_argument("--fisher-every", type=_fisher_every, default=None, metavar="N",
                   help="accumulate the metric on one batch in N (default auto: P/16)")
    p.add_argument("--average", action="store_true", help="keep a Polyak average of θ")
    p.add_argument("--mixing", default=None, metavar="NAME",
                   help="gaussian-mean: mixing-matrix array in DATA (default A if present)")
    p.add_argument("--classes", type=_positive_int, default=None, metavar="K",
                   help="softmax: number of classes (default: from the data)")
    p.add_argument("--hidden", type=_positive_int, default=None, metavar="H",
                   help="mlp: hidden units (default 16)")
    p.add_argument("--sharpness", type=float, default=None, metavar="B",
                   help="ica: source prior p(s) ∝ cosh(B·s)^(−1/B); default 0.5, the "
                        "logistic density; larger B is closer to a Laplace prior")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                   help="also checkpoint every N samples")
    p.add_argument("--max-samples", type=_positive_int, default=None,
                   help="stop (resumably) after this many samples in total")
    p.add_argument("--log-every", type=_positive_int, default=65536, metavar="N",
                   help="samples between progress records in metrics.jsonl")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress line on stderr (auto: when stderr is a terminal)")

    p = sub.add_parser("evaluate", help="evaluate a fitted run on a dataset")
    p.add_argument("run", metavar="RUN")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--x", default="X", metavar="NAME")
    p.add_argument("--y", default="y", metavar="NAME")
    p.add_argument("--w", default=None, metavar="NAME",
                   help="sample-weight array: weighted means, as in training (GLMs; e.g. a "
                        "Poisson exposure)")

    p = sub.add_parser("params", help="print a fitted run's parameters as JSON")
    p.add_argument("run", metavar="RUN")

    p = sub.add_parser("demo", help="fit the embedded demo dataset and compare with the "
                                    "full-batch optimum")
    p.add_argument("--out", default=None, metavar="RUN",
                   help="run directory (default: a new temporary directory)")
    return parser


def _half_life(text: str):
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("none", "inf"):
        return None
    return float(text)


class _GracefulStop:
    """SIGINT/SIGTERM ask the learner to stop after its current batch; a second SIGINT
    interrupts at once.
    """

    def __init__(self):
        self.learner = None
        self.signalled = False

    def attach(self, learner):
        self.learner = learner

    def __enter__(self):
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled = True
        print("\nnatgrad-stream: stopping after the current batch (checkpoint follows)...",
              file=sys.stderr)
        if self.learner is not None:
            self.learner.request_stop()

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def _cmd_make_data(args) -> int:
    from natgrad_stream.data.datasets import make_dataset

    make_dataset(args.out, task=args.task, rows=args.rows, features=args.features,
                 chunk_rows=args.chunk_rows, test_rows=args.test_rows, seed=args.seed,
                 dtype=args.dtype, overwrite=args.overwrite)
    _print_json({"path": str(args.out), "task": args.task, "rows": args.rows,
                 "features": args.features, "chunk_rows": args.chunk_rows,
                 "test_rows": args.test_rows, "seed": args.seed, "dtype": args.dtype})
    return EXIT_OK


def _learner_options(args) -> dict:
    rewhiten = args.rewhiten_every if args.rewhiten_every is not None else args.rewhiten
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    return dict(metric=args.metric, structure=args.structure, optimizer=args.optimizer,
                lr=args.lr, step_schedule=args.step_schedule, rewhiten=rewhiten,
                half_life=_half_life(args.half_life), whitening=args.whitening,
                damping=args.damping, floor=args.floor, batch_size=batch_size,
                seed=args.seed, average=args.average, fisher_every=args.fisher_every,
                mc_samples=args.mc_samples)


#: ``fit`` options of the L-BFGS path: (command-line name, NaturalLBFGS keyword).
_LBFGS_ONLY = (("--lbfgs-rounds", None), ("--lbfgs-iters", "iters"), ("--lbfgs-tol", "tol"),
               ("--lbfgs-gtol", "gtol"), ("--window", "window"))


def _given(args, flag: str) -> bool:
    return getattr(args, flag.lstrip("-").replace("-", "_")) is not None


def _lbfgs_options(args) -> dict:
    """NaturalLBFGS options of ``fit --optimizer lbfgs``; rejects streaming-only options."""
    sgd_only = [flag for flag, given in (
        ("--epochs", args.epochs is not None), ("--lr", args.lr is not None),
        ("--step-schedule", args.step_schedule is not None),
        ("--rewhiten-every", args.rewhiten_every is not None),
        ("--rewhiten", args.rewhiten is not None), ("--half-life", args.half_life != "auto"),
        ("--fisher-every", args.fisher_every is not None), ("--average", args.average),
        ("--checkpoint-every", args.checkpoint_every is not None)) if given]
    if sgd_only:
        raise ValueError(f"{', '.join(sgd_only)} {'does' if len(sgd_only) == 1 else 'do'} not "
                         "apply to --optimizer lbfgs (a batch method: it runs --lbfgs-rounds "
                         "rounds of at most --lbfgs-iters L-BFGS iterations, re-whitening and "
                         "checkpointing after every round)")
    opts = dict(optimizer=LBFGS, metric=args.metric, structure=args.structure,
                whitening=args.whitening, floor=args.floor, seed=args.seed,
                mc_samples=args.mc_samples)
    if args.damping is not None:
        opts["damping"] = args.damping
    if args.batch_size is not None:
        opts["batch_size"] = args.batch_size
    opts.update({key: getattr(args, flag[2:].replace("-", "_"))
                 for flag, key in _LBFGS_ONLY if key is not None and _given(args, flag)})
    return opts


def _cmd_fit(args) -> int:
    from natgrad_stream.run import fit_run

    if not args.resume and args.model is None:
        raise ValueError("fit: --model is required for a new run")
    lbfgs_given = [flag for flag, _ in _LBFGS_ONLY if _given(args, flag)]
    if args.resume:  # the run keeps its options; only the round count may grow
        late = [flag for flag in lbfgs_given if flag != "--lbfgs-rounds"]
        if late:
            raise ValueError(f"{', '.join(late)} cannot be changed on --resume: the run "
                             "keeps its options (--lbfgs-rounds may raise the total rounds)")
        options = _learner_options(args)
    elif args.optimizer == LBFGS:
        options = _lbfgs_options(args)
    elif lbfgs_given:
        raise ValueError(f"{', '.join(lbfgs_given)} "
                         f"{'applies' if len(lbfgs_given) == 1 else 'apply'} only with "
                         "--optimizer lbfgs")
    else:
        options = _learner_options(args)
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    with _GracefulStop() as stop:
        summary = fit_run(
            args.data, args.out, model=args.model, x=args.x, y=args.y, w=args.w,
            epochs=args.epochs, resume=args.resume, overwrite=args.overwrite,
            progress=progress, checkpoint_every=args.checkpoint_every,
            max_samples=args.max_samples, log_every=args.log_every, mixing=args.mixing,
            model_options={"classes": args.classes, "hidden": args.hidden,
                           "sharpness": args.sharpness},
            learner_options=options, stop_handler=stop.attach, rounds=args.lbfgs_rounds)
    _print_json(summary)
    return EXIT_SIGNAL if stop.signalled else EXIT_OK


def _cmd_evaluate(args) -> int:
    from natgrad_stream.run import evaluate_run

    _print_json(evaluate_run(args.run, args.data, x=args.x, y=args.y, w=args.w))
    return EXIT_OK


def _cmd_params(args) -> int:
    from natgrad_stream.run import run_params

    _print_json(run_params(args.run))
    return EXIT_OK


def _cmd_demo(args) -> int:
    from natgrad_stream.demo import run_demo

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="natgrad-demo-"))
    _print_json(run_demo(out, log=sys.stderr))
    return EXIT_OK


COMMANDS = {"make-data": _cmd_make_data, "fit": _cmd_fit, "evaluate": _cmd_evaluate,
            "params": _cmd_params, "demo": _cmd_demo}


def main(argv=None) -> int:
    """Entry point of the ``natgrad-stream`` console script."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return COMMANDS[args.command](args)
    except (DataError, RunDirectoryError, CheckpointError, ValueError, TypeError,
            FileExistsError, FileNotFoundError) as exc:
        print(f"natgrad-stream {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as exc:
        print(f"natgrad-stream {args.command}: learning failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"natgrad-stream {args.command}: interrupted", file=sys.stderr)
        return EXIT_SIGNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
