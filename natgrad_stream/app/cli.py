"""The ``natgrad-stream`` command line.

Subcommands: ``make-data``, ``fit``, ``convert``, ``evaluate``, ``predict``, ``export``,
``params``, ``summary``, ``plot``, ``demo``.
Machine-readable results go to stdout as one JSON object on the last line; progress and
messages go to stderr. Exit status: 0 success, 1 failure in learning, 2 bad input or
usage, 130 stopped by a signal (after writing a resumable checkpoint).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from natgrad_stream import __version__
from natgrad_stream._constants import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS
from natgrad_stream._entry import forget_keyboard_interrupt
from natgrad_stream.errors import (
    CheckpointError,
    DataError,
    DistributedError,
    OptionError,
    RunDirectoryError,
)
from natgrad_stream.training import options as opts
from natgrad_stream.training.options import (
    METRIC_CHOICES,
    MODEL_CHOICES,
    OPTIMIZER_CHOICES,
    STRUCTURE_CHOICES,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGNAL = 0, 1, 2, 130
#: ``make-data`` tasks: one per model family (checked against the registry by a test).
TASK_CHOICES = MODEL_CHOICES
__all__ = ["METRIC_CHOICES", "MODEL_CHOICES", "OPTIMIZER_CHOICES", "STRUCTURE_CHOICES",
           "TASK_CHOICES", "build_parser", "main", "run"]


#: Whether the running command has written its result (a signal after it loses nothing).
_RESULT = {"written": False}


def _print_json(obj: dict) -> None:
    from natgrad_stream.training.callbacks import json_clean

    sys.stdout.write(json.dumps(json_clean(obj)) + "\n")
    sys.stdout.flush()
    _RESULT["written"] = True


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in ``[low, high]`` (``high``: a sanity bound)."""
    def convert(text: str) -> int:
        value = int(text)
        if value < low:
            what = "a positive integer" if low == 1 else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {text}")
        return value
    convert.__name__ = "int"
    return convert


#: make-data's bounds: rows (a store of 10¹² rows is far beyond a synthetic dataset),
#: feature columns, rows per chunk (as a batch), seeds (as fit's).
_ROWS = _bounded_int(1, 10**12)
_TEST_ROWS = _bounded_int(0, 10**12)
_FEATURES = _bounded_int(1, 1_000_000)
_CHUNK_ROWS = _bounded_int(1, opts.MAX_ROWS_IN_MEMORY)
_SEED = _bounded_int(0, opts.MAX_SEED)
_HASH_BITS = _bounded_int(1, 31)


def _DENSITY(text: str) -> float:  # noqa: N802 (an argparse type, named as the others)
    """An argparse type: a fraction of features in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _ALPHA(text: str) -> float:  # noqa: N802 (an argparse type, named as the others)
    """An argparse type: a significance level in (0, 1)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


_NO_DEFAULT = (None, False, argparse.SUPPRESS)


class _HelpFormatter(argparse.HelpFormatter):
    """Help texts with the default of every option that has one (unless the text already
    says it, as the fit options' do).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and not any(action.default is v for v in _NO_DEFAULT) \
                and "(default" not in text and "%(default)" not in text:
            text += " (default %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and a hint, not the usage.

    Its subcommands' parsers are of this class too (argparse makes them with the parent's
    class), so a bad choice or value in any of them reads ``natgrad-stream fit: error:
    argument --model: invalid choice: ...`` then ``see 'natgrad-stream fit --help'``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee '{self.prog} --help'\n")

    def parse_args(self, args=None, namespace=None):
        # an unrecognized argument is reported by the subcommand it was given to
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            commands = next((a.choices for a in self._actions
                             if isinstance(a, argparse._SubParsersAction)), {})
            where = commands.get(getattr(namespace, "command", None), self)
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="natgrad-stream",
        description="Natural-gradient learning on chunked Zarr data streams. Results go to "
                    "stdout as one JSON line; progress and errors to stderr. Exit status: "
                    "0 done, 1 learning failed, 2 bad input or usage, 130 stopped by a "
                    "signal (after a resumable checkpoint).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands",
                                help="'natgrad-stream COMMAND --help' describes one")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")

    p = command("make-data", "write a synthetic, ill-conditioned Zarr v3 dataset drawn from "
                             "a known true model (recorded in the group's attributes)")
    p.add_argument("out", metavar="OUT.zarr", help="Zarr group to write")
    p.add_argument("--task", required=True, choices=TASK_CHOICES,
                   help="model family whose true model draws the data (required)")
    p.add_argument("--rows", required=True, type=_ROWS, metavar="N",
                   help="training rows: arrays X (and y) (required)")
    p.add_argument("--features", required=True, type=_FEATURES, metavar="D",
                   help="feature columns of X (required)")
    p.add_argument("--chunk-rows", type=_CHUNK_ROWS, default=None, metavar="R",
                   help="rows per Zarr chunk (chunks span all columns; default 65,536 where "
                        "those hold at most 60 MiB of features, else fewer, a multiple of "
                        "1,024; the chunk size sets the values drawn)"),
    p.add_argument("--test-rows", type=_TEST_ROWS, default=0, metavar="M",
                   help="also write M held-out rows as X_test (and y_test), from the same "
                        "distribution")
    p.add_argument("--seed", type=_SEED, default=0, metavar="S",
                   help="random seed (the same seed writes the same data)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the features")
    p.add_argument("--density", type=_DENSITY, default=None, metavar="R",
                   help="write sparse data: X as a CSR group (AnnData layout) with "
                        "round(R x D) non-zeros a row, e.g. 0.0005 for 50 of 100,000 "
                        "(tasks logistic, linear, poisson, softmax)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = command("fit", "learn a model from a Zarr group by natural gradient")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="Zarr group, path or URL (or 'data' in --config)")
    p.add_argument("--out", default=None, metavar="RUN",
                   help="run directory (or 'out' in --config)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="fit options from a TOML file: any option by its name in the "
                        "options table (batch_size, lr, ...) plus data, model and out; "
                        "flags on the command line override it")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN (options that differ from the run's are "
                        "refused, except --epochs, --lbfgs-rounds, --max-samples, "
                        "--checkpoint-every, --log-every and --progress)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN")
    _allow_legacy_argument(p)
    opts.add_arguments(p)

    p = command("convert", "copy a table (Parquet file or directory, CSV, .npy) into a "
                           "checksummed Zarr store that fits as the table does")
    p.add_argument("data", metavar="SRC", help="Parquet file or directory, CSV or .npy file "
                                               "(or a Zarr group)")
    p.add_argument("out", metavar="OUT.zarr", help="Zarr group to write (arrays X, y, w)")
    p.add_argument("--x", default=None, metavar="COLUMNS",
                   help="feature columns: names or globs, comma-separated, e.g. 'f*' "
                        "(default every column but --y and --w; a Zarr group's X)")
    p.add_argument("--y", default="y", metavar="NAME",
                   help="target column ('none': no targets)")
    p.add_argument("--w", default=None, metavar="NAME", help="sample-weight column")
    p.add_argument("--chunk-rows", type=_CHUNK_ROWS, default=None, metavar="R",
                   help="rows per chunk (default: the source's row groups or blocks, so the "
                        "copy fits as the source does)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _encoding_arguments(p)

    p = command("evaluate", "evaluate a fitted run on a dataset: n and the model's measures "
                            "as JSON")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    p.add_argument("data", metavar="DATA", help="Zarr group, path or URL")
    p.add_argument("--x", default=None, metavar="NAME",
                   help="features array (default X; a table: the run's columns)")
    p.add_argument("--y", default=None, metavar="NAME",
                   help="targets array (default y; a table: the run's column; ignored by "
                        "models without targets)")
    p.add_argument("--w", default=None, metavar="NAME",
                   help="sample-weight array: weighted means, as in training (GLMs; e.g. a "
                        "Poisson exposure); default unweighted")
    _allow_legacy_argument(p)
    _encoding_arguments(p)

    p = command("predict", "write a fitted run's predictions for every row of a dataset "
                           "to a .zarr, .parquet or .csv file, streamed chunk by chunk")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    p.add_argument("data", metavar="DATA", help="Zarr group, path or URL (dense or sparse X)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output: FILE.zarr (checksummed arrays), FILE.parquet (needs pyarrow) "
                        "or FILE.csv (required)")
    p.add_argument("--what", default=None, metavar="KINDS",
                   help="comma-separated: proba (proba_<class> columns), class, mean, link "
                        "(log-odds, logits or log-mean); default proba,class for classifiers, "
                        "mean for regressors")
    p.add_argument("--x", default=None, metavar="NAME",
                   help="features array (default X; a table: the run's columns)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    _allow_legacy_argument(p)
    _encoding_arguments(p)

    p = command("export", "export a fitted run as an ONNX graph (through its scikit-learn "
                          "equivalent and skl2onnx)")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", help="ONNX file to write "
                   "(required)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="the graph's input and arithmetic type (float64: equal to round-off)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")

    p = command("params", "print a fitted run's parameters as JSON (the Polyak average when "
                          "the run kept one)")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    _allow_legacy_argument(p)

    p = command("summary", "statistical inference on a fitted run (GLMs, softmax): "
                           "coefficients, standard errors, tests, confidence intervals, "
                           "log-likelihood, deviance, AIC/BIC, in one pass over the data")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="Zarr group, path or URL (default: the run's training data)")
    p.add_argument("--x", default=None, metavar="NAME",
                   help="features array (default: the run's)")
    p.add_argument("--y", default=None, metavar="NAME",
                   help="targets array (default: the run's)")
    p.add_argument("--w", default=None, metavar="NAME",
                   help="frequency-weight array (default: the run's on its training data, "
                        "else none)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="a statsmodels-like table, or one JSON object")
    p.add_argument("--alpha", type=_ALPHA, default=0.05, metavar="A",
                   help="confidence intervals at level 1 - A")
    p.add_argument("--cov", choices=("model", "robust"), default="model",
                   help="covariance of the table's columns (and of JSON's se, z, p, "
                        "ci_low, ci_high): model-based, or robust (HC0 sandwich); JSON "
                        "always adds the robust ones as *_robust")
    p.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="compute the pass on the Dask cluster of this scheduler (every "
                        "worker opens DATA, a path or URL)")
    p.add_argument("--dask-workers", type=_bounded_int(1, 1024), default=None, metavar="N",
                   help="compute the pass on a local Dask cluster of N processes")
    _allow_legacy_argument(p)

    p = command("plot", "draw a run's training log (loss, rows/s, metric refreshes) into "
                        "an image; needs matplotlib")
    p.add_argument("run", metavar="RUN", help="run directory written by 'fit'")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help="image to write (format from the suffix; default RUN/plot.png)")

    p = command("demo", "fit the embedded demo dataset and compare with the full-batch "
                        "optimum")
    p.add_argument("--out", default=None, metavar="RUN",
                   help="keep the run in this directory (default: a temporary one, removed "
                        "at the end)")
    return parser


class _GracefulStop:
    """SIGINT/SIGTERM ask the learner to stop after its current batch (a checkpoint
    follows); a second SIGINT or SIGTERM interrupts at once (a batch that never comes,
    e.g. a read the OS does not end, cannot hold the process), except while a checkpoint
    is being written, which it lets finish.
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
        from natgrad_stream.training.checkpoint import WRITING

        if self.signalled:
            if WRITING.is_set():
                print("\nnatgrad-stream: finishing the checkpoint being written...",
                      file=sys.stderr)
                return
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


def _allow_legacy_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-legacy-checkpoint", action="store_true",
                   help="use a legacy checkpoint (written by an earlier natgrad_stream: not "
                        "bound to its run, checksums optional), which is otherwise refused")


def _encoding_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--one-hot", action="store_true",
                       help="tables: one-hot the string and dictionary columns of --x "
                            "(sparse rows; the same as ending --x in ';onehot')")
    group.add_argument("--hash-bits", type=_HASH_BITS, default=None, metavar="B",
                       help="tables: hash the columns of --x into 2**B sparse features "
                            "(categories as 'column=value'; the same as ending --x in "
                            "';hash=B')")


def _encoded_x(x, args):
    """``x`` with the encoding of ``--one-hot`` / ``--hash-bits`` appended (else itself)."""
    from natgrad_stream.data.table_encoding import encoded_x

    return encoded_x(x, one_hot=args.one_hot, hash_bits=args.hash_bits)


def _chunk_bytes(args, rows: int) -> int:
    """Bytes of features in a chunk of ``rows`` rows of the make-data arguments ``args``."""
    import numpy as np

    return int(rows) * int(args.features) * np.dtype(args.dtype).itemsize


def _cmd_make_data(args) -> int:
    from natgrad_stream.data.datasets import make_dataset
    from natgrad_stream.data.metadata import format_bytes

    group = make_dataset(args.out, task=args.task, rows=args.rows, features=args.features,
                         chunk_rows=args.chunk_rows, test_rows=args.test_rows,
                         seed=args.seed, dtype=args.dtype, overwrite=args.overwrite,
                         density=args.density)
    meta = group.attrs["natgrad_stream"]
    chunk_rows = int(meta["chunk_rows"])
    out = {"path": str(args.out), "task": args.task, "rows": args.rows,
           "features": args.features, "chunk_rows": chunk_rows,
           "test_rows": args.test_rows, "seed": args.seed, "dtype": args.dtype}
    if args.density is not None:
        out.update(density=args.density, nonzeros_per_row=int(meta["nonzeros_per_row"]))
    elif args.chunk_rows is None and chunk_rows != DEFAULT_CHUNK_ROWS:
        out["chunk_note"] = (
            f"default chunks of {chunk_rows:,} rows "
            f"({format_bytes(_chunk_bytes(args, chunk_rows))} of features; "
            f"{DEFAULT_CHUNK_ROWS:,} rows would take "
            f"{format_bytes(_chunk_bytes(args, DEFAULT_CHUNK_ROWS))}, over the "
            f"{format_bytes(DEFAULT_CHUNK_BYTES)} chunk target): the values differ from "
            f"those --chunk-rows {DEFAULT_CHUNK_ROWS} writes for the same seed")
    _print_json(out)
    return EXIT_OK


def _cmd_fit(args) -> int:
    from natgrad_stream.app.runs import fit_run

    data, out, from_file = args.data, args.out, {}
    if args.config is not None:
        from_file = _read_config(args.config)
        data = data if data is not None else from_file.pop("data", None)
        out = out if out is not None else from_file.pop("out", None)
        from_file.pop("data", None)
        from_file.pop("out", None)
    if data is None or out is None:
        raise OptionError("fit needs DATA and --out RUN (on the command line or as 'data' "
                          "and 'out' in --config)")
    with _GracefulStop() as stop:
        given = {"progress": opts.BY_NAME["progress"].default, **from_file,
                 **opts.given_options(args)}
        summary = fit_run(data, out, resume=args.resume, overwrite=args.overwrite,
                          stop_handler=stop.attach, config=args.config,
                          allow_legacy=args.allow_legacy_checkpoint, **given)
    _print_json(summary)
    return EXIT_SIGNAL if stop.signalled else EXIT_OK


def _read_config(path) -> dict:
    """Fit options from a TOML file: option names of the table plus data and out."""
    import tomllib

    from natgrad_stream._files import open_regular

    try:
        with open_regular(path) as fh:
            config = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"config {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise OptionError(f"config {path} is not UTF-8 text (byte {exc.start} is "
                          f"{exc.object[exc.start:exc.start + 1]!r}): TOML files are UTF-8"
                          ) from None
    known = set(opts.BY_NAME) | set(opts.RENAMED) | {"data", "out"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise OptionError(f"config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (names as in the options table, e.g. "
                          "batch_size, lr, epochs)")
    config = opts.upgrade_keywords(config, where=f"config {path} key")
    return {k: (str(v) if k in ("data", "out") else v) for k, v in config.items()}


def _cmd_convert(args) -> int:
    from natgrad_stream.data.convert import convert_to_zarr

    y = None if args.y is not None and args.y.lower() == "none" else args.y
    _print_json(convert_to_zarr(args.data, args.out, x=_encoded_x(args.x, args), y=y, w=args.w,
                                chunk_rows=args.chunk_rows, overwrite=args.overwrite))
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    from natgrad_stream.app.runs import evaluate_run

    _print_json(evaluate_run(args.run, args.data, x=_encoded_x(args.x, args), y=args.y, w=args.w,
                             allow_legacy=args.allow_legacy_checkpoint))
    return EXIT_OK


def _cmd_predict(args) -> int:
    from natgrad_stream.app.predict import parse_kinds, predict_run

    _print_json(predict_run(args.run, args.data, args.out, what=parse_kinds(args.what),
                            x=_encoded_x(args.x, args), overwrite=args.overwrite,
                            allow_legacy=args.allow_legacy_checkpoint))
    return EXIT_OK


def _cmd_export(args) -> int:
    from natgrad_stream.onnx_export import write_onnx

    _print_json(write_onnx(args.run, args.onnx, dtype=args.dtype, overwrite=args.overwrite))
    return EXIT_OK


def _cmd_params(args) -> int:
    from natgrad_stream.app.runs import run_params

    _print_json(run_params(args.run, allow_legacy=args.allow_legacy_checkpoint))
    return EXIT_OK


def _cmd_summary(args) -> int:
    from natgrad_stream.app.summary import summary_run

    result = summary_run(args.run, args.data, x=args.x, y=args.y, w=args.w,
                         alpha=args.alpha, cov=args.cov, dask=args.dask,
                         dask_workers=args.dask_workers,
                         allow_legacy=args.allow_legacy_checkpoint)
    if args.format == "json":
        _print_json(result.to_dict())
    else:
        sys.stdout.write(str(result) + "\n")
        sys.stdout.flush()
        _RESULT["written"] = True
    return EXIT_OK


def _cmd_plot(args) -> int:
    from natgrad_stream.app.plot import plot_run

    _print_json({"path": str(plot_run(args.run, args.out))})
    return EXIT_OK


def _cmd_demo(args) -> int:
    from natgrad_stream.app.demo import run_demo

    _print_json(run_demo(Path(args.out) if args.out else None, log=sys.stderr))
    return EXIT_OK


COMMANDS = {"make-data": _cmd_make_data, "fit": _cmd_fit, "convert": _cmd_convert,
            "evaluate": _cmd_evaluate, "predict": _cmd_predict, "export": _cmd_export,
            "params": _cmd_params, "plot": _cmd_plot, "demo": _cmd_demo,
            "summary": _cmd_summary}


class _PrefixFormatter:
    """``PREFIX: message``, and ``PREFIX: warning: message`` for warnings (as the warnings
    module's lines read on the command line).
    """

    def __init__(self, prefix: str):
        import logging

        self._plain = logging.Formatter(f"{prefix}: %(message)s")
        self._warning = logging.Formatter(f"{prefix}: warning: %(message)s")

    def format(self, record) -> str:
        import logging

        return (self._warning if record.levelno >= logging.WARNING else self._plain
                ).format(record)


def _log_to_stderr(prefix: str) -> None:
    """The ``natgrad_stream`` logger's records as ``PREFIX: message`` lines on stderr (the
    library logs; the command decides where its lines go).
    """
    import logging

    log = logging.getLogger("natgrad_stream")
    for h in list(log.handlers):
        if getattr(h, "_natgrad_cli", False):
            log.removeHandler(h)
    handler = _CurrentStderrHandler()
    handler._natgrad_cli = True
    handler.setFormatter(_PrefixFormatter(prefix))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # the commands report progress by their own callbacks (bar, lines every S seconds)
    logging.getLogger("natgrad_stream.fit").setLevel(logging.WARNING)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives, not the stream of the
    command that installed it (the handler outlives a command run in-process, e.g. by
    tests that capture and then close stderr).
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it: the property decides
        pass


def _os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


#: Signals :func:`_interrupt` turned into KeyboardInterrupt (their numbers).
_INTERRUPTS: list = []


def _interrupt(signum, frame):
    """SIGINT and SIGTERM outside a fit's graceful window: stop the command at once."""
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def _exit_now(signum, frame):
    """A signal once the command has returned (output written): one line, exit 130."""
    os.write(2, b"natgrad-stream: stopped by a signal after the command had finished\n")
    os._exit(EXIT_SIGNAL)


def _set_stop_signals(handler) -> dict:
    """Install ``handler`` for SIGINT and SIGTERM (main thread only); the previous ones."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def main(argv=None) -> int:
    """Entry point of the ``natgrad-stream`` command (see :func:`run`).

    Every condition a user or the environment causes ends in one line on stderr and the
    documented exit status; a traceback means a bug. SIGINT and SIGTERM end any command at
    any moment with one line and 130 (during a fit: after the current batch and a
    checkpoint, see :class:`_GracefulStop`).
    """
    old = _set_stop_signals(_interrupt)
    prefix, _RESULT["written"] = "natgrad-stream", False
    signalled = len(_INTERRUPTS)
    try:
        args = build_parser().parse_args(argv)
        prefix = f"natgrad-stream {args.command}"
        return _run_command(args, prefix)
    except (KeyboardInterrupt, ImportError) as exc:
        # (a library whose import a signal interrupted may raise ImportError instead)
        if isinstance(exc, ImportError) and len(_INTERRUPTS) == signalled:
            raise
        if _RESULT["written"]:
            note = " after the result was written"
        elif prefix.endswith(" fit"):
            note = ": no new checkpoint (one written before is kept)"
        else:
            note = ""
        print(f"{prefix}: interrupted{note}", file=sys.stderr)
        return EXIT_SIGNAL
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_command(args, prefix: str) -> int:
    _log_to_stderr(prefix)
    if args.command in ("fit", "evaluate", "predict", "demo", "params", "make-data",
                        "convert", "summary"):
        from natgrad_stream.data.zarr_reads import configure_zarr_threads

        configure_zarr_threads()  # the command owns its process (the library never does)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = one_line_warning
            return COMMANDS[args.command](args)
    except (DataError, OptionError, RunDirectoryError, CheckpointError, DistributedError,
            ValueError,
            TypeError) as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # missing paths, read-only or full disks, ...
        print(f"{prefix}: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"{prefix}: error: out of memory (a smaller --batch-size or fewer chunks per "
              "read need less)", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as exc:
        print(f"{prefix}: learning failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run() -> None:
    """The console script and ``python -m natgrad_stream``: :func:`main`, then exit.

    From the first line to the last a signal ends the process with one line and status
    130, never a traceback: :func:`main` turns it into its ``interrupted`` line; once main
    has returned (everything written and flushed), a signal exits at once with 130.
    """
    _set_stop_signals(_interrupt)
    atexit.register(_ignore_stop_signals)  # first registered: the last callback to run
    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except KeyboardInterrupt:  # between main's return and here
        os.write(2, b"natgrad-stream: interrupted\n")
        code = EXIT_SIGNAL
    _set_stop_signals(_exit_now)
    _bounded_shutdown(code)
    forget_keyboard_interrupt()  # (a caught one: else `python -m` would exit −2)
    sys.exit(code)


def _ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process (registered with atexit).

    The interpreter's exit joins the command's threads (a signal then still exits 130,
    :func:`_exit_now`), runs the atexit callbacks, and then resets every Python handler
    to the default action, after which a signal would kill the process (status −15 or −2)
    during the modules' teardown although its result was written. An ignored signal is
    left ignored by that reset (a mask would not do: it is per thread, and the kernel
    delivers a process's signal to any thread not blocking it): a signal arriving in that
    last stretch is dropped, and the status is the command's.
    """
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


#: Longest the interpreter may take to shut down after the command (joining threads).
SHUTDOWN_SECONDS = 20.0


def _bounded_shutdown(code: int) -> None:
    """Exit with ``code`` after :data:`SHUTDOWN_SECONDS` even if a thread the interpreter
    joins at exit never ends (e.g. stuck in a read the OS does not end): output is already
    flushed, so nothing written is lost.
    """
    import threading

    def give_up():
        os.write(2, b"natgrad-stream: a background thread did not stop; exiting without "
                    b"it\n")
        os._exit(code)

    timer = threading.Timer(SHUTDOWN_SECONDS, give_up)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":  # pragma: no cover
    run()
