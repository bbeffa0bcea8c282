"""Fault injection: damage a small store, run directory, flag, config file or process in one
way, run the command line on it, and classify what it did.

    python scripts/fuzz.py --cases 300 --jobs 2 --seed 1          # JSON summary on stdout
    python scripts/fuzz.py --cases 60 --categories chunks,signals --out fuzz.json
    python scripts/fuzz.py --seed 1 --only 17 --keep              # one case again, kept on disk

Categories: ``metadata`` (zarr.json edits), ``chunks`` (chunk files), ``values`` (data
values, and rows changed between a run and its ``--resume``), ``rundir`` (run.json,
checkpoints, locks), ``flags`` (options and config files), ``signals`` (SIGINT/SIGTERM at
random moments, then ``--resume``). Case ``i`` of a seed is always the same fault (given the
same ``--categories``): its category is ``categories[i % len(categories)]``, its fault drawn
from ``random.Random(f"{seed}:{i}")``.

Templates are built once per run (a 2,900 × 5 logistic store in 1,000-row chunks, a run fitted
on it, a second run on the same data with another seed, a 20,000-row store and uninterrupted
reference runs for the signal cases); each case copies what it damages. Every command runs as
``python -m natgrad_stream ...`` in its own process group with a timeout, a 4 GiB address
space limit and a shared Numba cache. Outcomes of a step:

- ``traceback``: stderr holds "Traceback", or the exit code is not 0, 1, 2 or 130;
- ``hang``: the timeout expired;
- ``silent_wrong``: exit 0 although the fault is one the format can detect (or the output
  differs from the undamaged run's, with no warning saying so);
- ``undetectable``: exit 0 on a fault the format cannot see (counted apart);
- ``python_start_up``: killed by the signal (status −2 or −15) with no output, the signal
  sent before the interpreter reaches the package's first line (the longest of 5 timed
  ``python -c "import natgrad_stream._entry"``, ``python_start_up_seconds`` in the
  summary): Python's default actions, which no package code can change (counted apart);
- ``unclear``: an error whose stderr has more than 2 lines besides warnings, or names none of
  the things it should (the damaged file, array, option);
- ``refused``: a clean error on a fault that should be harmless (e.g. a zero-weight chunk);
- ``clean_error``: a documented exit code with a short message naming what is wrong;
- ``ok``: exit 0 on a harmless fault, or the expected warning.

A case's outcome is its worst step's. The summary counts outcomes per category and per fault
kind and lists every failure (``traceback``, ``hang``, ``silent_wrong``, ``unclear``,
``refused``) with its reproduction, command, exit code and the last lines of stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("metadata", "chunks", "values", "rundir", "flags", "signals")
#: Worst first: a case's outcome is the first of these any of its steps had.
OUTCOMES = ("traceback", "hang", "silent_wrong", "unclear", "refused", "clean_error",
            "undetectable", "python_start_up", "ok")
FAILURES = ("traceback", "hang", "silent_wrong", "unclear", "refused")
DOCUMENTED_EXITS = (0, 1, 2, 130)
ROWS, FEATURES, CHUNK = 2900, 5, 1000  # the last chunk is partial: padding to grow into
BIG_ROWS, BIG_CHUNK = 20_000, 2000
FIT = ["--model", "logistic", "--batch-size", "500", "--progress", "never"]
SIGNAL_CONFIGS = {
    "sgd": ["--model", "logistic", "--epochs", "3", "--batch-size", "256",
            "--checkpoint-every", "2000", "--progress", "never"],
    # tolerances at zero: every round runs its evaluations, so signals land mid-round
    "lbfgs": ["--model", "logistic", "--optimizer", "lbfgs", "--lbfgs-rounds", "4",
              "--lbfgs-iters", "8", "--lbfgs-tol", "1e-300", "--lbfgs-gtol", "1e-300",
              "--batch-size", "4096", "--progress", "never"],
}
MEMORY_LIMIT = 4 << 30


# ----------------------------------------------------------------------------- cases


class Step:
    """One command of a case and what it must do.

    ``expect``: ``detect`` (the fault must be refused), ``undetectable`` (the format cannot
    see it), ``benign`` (exit 0 expected), ``either`` (exit 0 or a clean error), ``warn``
    (exit 0 only with a warning naming one of ``names``), ``same`` (exit 0 must print the
    undamaged run's output, else warn), ``signal`` (exit 0 or 130, no traceback).
    ``names``: what a clear error names (any one of them); ``reference``: the template's
    output compared under ``same``.
    """

    def __init__(self, label, argv, expect, names=(), reference=None):
        self.label, self.argv, self.expect = label, argv, expect
        self.names, self.reference = names, reference


class Case:
    """One fault (``apply(case_dir, ctx)``, or none for a flag) and the steps run on it;
    ``signal``: ``{"sig", "delay", "moment"}`` of a signal case.
    """

    def __init__(self, index, category, kind, fault, steps, apply=None, signal=None):
        self.index, self.category, self.kind, self.fault = index, category, kind, fault
        self.steps, self.apply, self.signal = steps, apply, signal


def _cli(*args) -> list:
    return [sys.executable, "-m", "natgrad_stream", *map(str, args)]


def _train_eval(ctx) -> list:
    return ["evaluate", "--train", "run", "store.zarr"] if ctx["has_train_flag"] else None


def _fresh(store="store.zarr", *extra) -> list:
    return ["fit", store, *FIT, "--epochs", "1", "--out", "new", "--overwrite", *extra]


RESUME = ["fit", "store.zarr", "--out", "run", "--resume", "--epochs", "3",
          "--progress", "never"]
FOLLOW = ["fit", "store.zarr", *FIT, "--out", "new", "--overwrite", "--follow",
          "--idle-timeout", "0.5", "--poll-seconds", "0.1"]
EVAL_TEST = ["evaluate", "run", "store.zarr", "--x", "X_test", "--y", "y_test"]


def _store_commands(rng, ctx, names, fresh, learned, follow=True) -> list:
    """Steps reading a damaged store: a fresh fit (expect ``fresh``), or a command over
    rows a run learned (``--resume``, ``evaluate --train``: expect ``learned``).
    """
    options = [("fit", _fresh(), fresh), ("resume", RESUME, learned)]
    if follow:
        options.append(("follow", FOLLOW, fresh))
    if _train_eval(ctx):
        options.append(("evaluate-train", _train_eval(ctx), learned))
    label, argv, expect = rng.choice(options)
    return [Step(label, argv, expect, names)]


# --- store metadata


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


GOOD_FILLS = {"X": ["NaN", 1e30, 5, "Infinity", -0.0], "y": [5, 0, 255]}
OTHER_DTYPES = ["float64", "float16", "int64", "bool", "complex64", "nonsense"]
BAD_ATTRIBUTES = [[1, 2], "text", 7, {"committed_rows": "abc"}, {"committed_rows": -1},
                  {"committed_rows": 10**30}]


def _metadata_case(rng, ctx) -> tuple:
    arr = rng.choice(["X", "y"])
    meta = f"store.zarr/{arr}/zarr.json"
    names = (arr, "zarr.json")
    other = {"X": "float32", "y": "uint8"}[arr]
    # y's labels are uint8 0/1: bool has the same size, and reads the same labels
    same_size = {"X": ["int32", "uint32"], "y": ["int8", "bool"]}[arr]
    kinds = {
        "dtype_same_size": lambda: (
            f"{arr} data_type {other} -> {(t := rng.choice(same_size))}",
            lambda d: d.__setitem__("data_type", t), "undetectable", "detect"),
        "dtype_other_size": lambda: (
            f"{arr} data_type -> "
            f"{(t := rng.choice([d for d in OTHER_DTYPES if d not in (other, *same_size)]))}",
            lambda d: d.__setitem__("data_type", t), "detect", "detect"),
        "shape_in_padding": lambda: ("X and y grown to 2,950 rows (inside the last chunk)",
                                     None, "undetectable", "detect"),
        "shape_one_array": lambda: (
            f"{arr} rows -> {(n := rng.choice([2950, 2000, 3500, 10**15, 0, -5]))}",
            lambda d: d["shape"].__setitem__(0, n), "detect", "detect"),
        "shape_shrunk": lambda: ("X and y shrunk to 1,500 rows", None, "undetectable", "detect"),
        "shape_ndim": lambda: (f"{arr} shape -> {(shape := [ROWS] if arr == 'X' else [ROWS, 1])}",
                               lambda d: d.__setitem__("shape", shape), "detect", "detect"),
        "chunks": lambda: (
            f"{arr} chunk_shape[0] -> {(n := rng.choice([500, 2000, 0, 10**12, -1]))}",
            lambda d: d["chunk_grid"]["configuration"]["chunk_shape"].__setitem__(0, n),
            "detect", "detect"),
        "codec_dropped": lambda: (f"{arr} zstd codec removed",
                                  lambda d: d.__setitem__("codecs", d["codecs"][:1]),
                                  "detect", "detect"),
        "codec_unknown": lambda: (
            f"{arr} zstd -> {(c := rng.choice(['gzip', 'blosc', 'no-such-codec', 'crc32c']))}",
            lambda d: d["codecs"][1].__setitem__("name", c)
            if c != "crc32c" else d["codecs"].append({"name": "crc32c"}),
            "detect", "detect"),
        "codec_transpose": lambda: (
            "X: a transpose codec added",
            lambda d: d["codecs"].insert(0, {"name": "transpose",
                                             "configuration": {"order": [1, 0]}}),
            "undetectable", "detect"),
        "endian": lambda: ("X bytes codec little -> big endian",
                           lambda d: d["codecs"][0]["configuration"].__setitem__("endian", "big"),
                           "undetectable", "detect"),
        "fill_value": lambda: (
            f"{arr} fill_value -> {(v := rng.choice(GOOD_FILLS[arr]))!r}",
            lambda d: d.__setitem__("fill_value", v), "benign", "benign"),
        "fill_value_invalid": lambda: (
            f"{arr} fill_value -> {(v := rng.choice(['abc', [1, 2], {'a': 1}, None]))!r}",
            lambda d: d.__setitem__("fill_value", v), "either", "either"),
        "json_malformed": lambda: (f"{arr}/zarr.json malformed", "malformed", "detect", "detect"),
        "json_deleted": lambda: (f"{arr}/zarr.json deleted", "deleted", "detect", "detect"),
        "group_json_malformed": lambda: ("group zarr.json malformed", "group-malformed",
                                         "detect", "detect"),
        "attribute_unknown": lambda: (
            f"unknown attribute on {(where := rng.choice(['group', arr]))}",
            ("attr", where), "benign", "benign"),
        "attribute_malformed": lambda: (
            f"group attribute natgrad_stream -> {(v := rng.choice(BAD_ATTRIBUTES))!r}",
            ("group-attr", v), "either", "either"),
        "key_unknown": lambda: (f"{arr}/zarr.json: unknown top-level key",
                                lambda d: d.__setitem__("fuzz_unknown", 1), "either", "either"),
    }
    kind = rng.choice(sorted(kinds))
    if kind in ("codec_transpose", "endian"):
        meta, names = "store.zarr/X/zarr.json", ("X", "zarr.json")
    fault, edit, fresh, learned = kinds[kind]()
    garbage = rng.choice(["truncate", "empty", "bytes", "latin1", "list", "null"])

    def apply(case: Path, ctx) -> None:
        if edit is None:
            rows = 2950 if kind == "shape_in_padding" else 1500
            for name in ("X", "y"):
                _edit_json(case / f"store.zarr/{name}/zarr.json",
                           lambda d: d["shape"].__setitem__(0, rows))
        elif edit == "malformed" or edit == "group-malformed":
            path = case / (meta if edit == "malformed" else "store.zarr/zarr.json")
            _malform(path, garbage, rng)
        elif edit == "deleted":
            (case / meta).unlink()
        elif isinstance(edit, tuple) and edit[0] == "attr":
            path = case / ("store.zarr/zarr.json" if edit[1] == "group" else meta)
            _edit_json(path, lambda d: d.setdefault("attributes", {}).__setitem__(
                "fuzz_note", {"x": [1, 2]}))
        elif isinstance(edit, tuple) and edit[0] == "group-attr":
            _edit_json(case / "store.zarr/zarr.json",
                       lambda d: d["attributes"].__setitem__("natgrad_stream", edit[1]))
        else:
            _edit_json(case / meta, edit)

    if kind in ("json_malformed", "json_deleted", "group_json_malformed"):
        fault += f" ({garbage})" if kind != "json_deleted" else ""
    if kind in ("group_json_malformed", "attribute_malformed"):
        names = ("zarr.json", "store.zarr", "attribute", "natgrad_stream")
    steps = _store_commands(rng, ctx, names, fresh, learned)
    if kind == "shape_in_padding" and steps[0].label == "resume":
        steps[0].expect, steps[0].names = "warn", ("appended",)  # the README's appended rows
    if kind == "fill_value" and steps[0].label == "resume":
        steps[0].expect = "either"  # the run fingerprints the metadata: a refusal is fine
    if kind.startswith("shape") and steps[0].label == "follow":
        steps[0].expect = "either"  # follow mode reads up to the arrays' common length
    return kind, fault, steps, apply


def _malform(path: Path, how: str, rng) -> None:
    text = path.read_bytes()
    data = {"truncate": text[: rng.randrange(1, max(2, len(text) - 1))],
            "empty": b"", "bytes": bytes(rng.randrange(256) for _ in range(64)),
            "latin1": text.replace(b'"', b'\xff"', 1), "list": b"[1, 2, 3]",
            "null": b"null"}[how]
    path.write_bytes(data)


# --- chunk files


def _chunks_of(case: Path, arr: str) -> list:
    return sorted(p for p in (case / "store.zarr" / arr / "c").rglob("*") if p.is_file())


def _chunk_case(rng, ctx) -> tuple:
    arr = rng.choice(["X", "y"])
    kinds = ["bitflip", "truncate", "empty", "delete", "swap", "duplicate", "directory",
             "fifo", "dev_zero", "dangling", "random_bytes", "stray_chunk", "stray_file"]
    kind = rng.choice(kinds)
    k = rng.randrange(3)
    other = rng.choice([j for j in range(3) if j != k])
    expect = "benign" if kind.startswith("stray") else "detect"
    fault = {"swap": f"{arr} chunks {k} and {other} swapped",
             "duplicate": f"{arr} chunk {other} copied over chunk {k}",
             "stray_chunk": f"{arr}: a chunk file beyond the shape",
             "stray_file": "an unrelated file in the store"}.get(kind, f"{arr} chunk {k}: {kind}")
    seed = rng.randrange(2**32)

    def apply(case: Path, ctx) -> None:
        r = random.Random(seed)
        chunks = _chunks_of(case, arr)
        path, second = chunks[k], chunks[other]
        size = path.stat().st_size
        if kind == "bitflip":
            data = bytearray(path.read_bytes())
            at = r.randrange(len(data))
            data[at] ^= 1 << r.randrange(8)
            path.write_bytes(bytes(data))
        elif kind == "truncate":
            with open(path, "r+b") as fh:
                fh.truncate(r.randrange(1, size))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "delete":
            path.unlink()
        elif kind == "swap":
            a, b = path.read_bytes(), second.read_bytes()
            path.write_bytes(b)
            second.write_bytes(a)
        elif kind == "duplicate":
            shutil.copyfile(second, path)
        elif kind == "directory":
            path.unlink()
            path.mkdir()
        elif kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif kind == "dev_zero":
            path.unlink()
            path.symlink_to("/dev/zero")
        elif kind == "dangling":
            path.unlink()
            path.symlink_to(case / "no-such-file")
        elif kind == "random_bytes":
            path.write_bytes(bytes(r.randrange(256) for _ in range(size)))
        elif kind == "stray_chunk":
            stray = case / "store.zarr" / arr / "c" / "7"
            if arr == "X":
                stray.mkdir(exist_ok=True)
            shutil.copyfile(path, stray / "0" if arr == "X" else stray)
        else:
            (case / "store.zarr" / "NOTES.txt").write_text("not part of the store\n")

    names = (arr, "chunk", f"c/{k}")
    steps = _store_commands(rng, ctx, names, expect, expect)
    if steps[0].label == "follow" and kind in MISSING_LIKE:
        steps[0].expect = "either"  # follow mode waits for a chunk it cannot read (README)
    return kind, fault, steps, apply


#: Chunk faults follow mode reads as a chunk not written yet (it waits: exit 0 at the idle
#: timeout, documented for stores without a committed row count).
MISSING_LIKE = ("delete", "directory", "fifo", "dev_zero", "dangling")


# --- data values


def _values_case(rng, ctx) -> tuple:
    kinds = ["nan", "inf", "huge", "label_out_of_range", "weights_zero_chunk",
             "weights_all_zero", "weights_negative", "weights_nan", "changed_rows",
             "changed_labels", "constant_column"]
    kind = rng.choice(kinds)
    row, col = rng.randrange(ROWS), rng.randrange(FEATURES)
    chunk = rng.randrange(3)
    length = rng.randrange(1, 101)
    start = rng.randrange(ROWS - length)
    value = {"nan": float("nan"), "inf": rng.choice([float("inf"), float("-inf")]),
             "huge": rng.choice([3e38, -3e38, 1e30, 1e20])}.get(kind)
    label = rng.choice([2, 7, 255])
    # a whole chunk (``chunk``), or rows anywhere: batches of zero weight wherever they fall
    zero_rows = rng.choice([(chunk * CHUNK, min(ROWS, (chunk + 1) * CHUNK)),
                            (start, min(ROWS, start + rng.randrange(1, 1500)))])

    def apply(case: Path, ctx) -> None:
        import numpy as np
        import zarr

        g = zarr.open_group(str(case / "store.zarr"), mode="r+")
        if kind in ("nan", "inf", "huge"):
            g["X"][row, col] = value
        elif kind == "label_out_of_range":
            g["y"][row] = label
        elif kind == "constant_column":
            g["X"][:, col] = np.zeros(ROWS, dtype="float32")
        elif kind == "changed_rows":
            g["X"][start:start + length] = g["X"][start:start + length] * 1.5
        elif kind == "changed_labels":
            g["y"][start:start + length] = 1 - g["y"][start:start + length]
        else:
            w = np.ones(ROWS, dtype="float32")
            lo, hi = zero_rows
            if kind == "weights_zero_chunk":
                w[lo:hi] = 0
            elif kind == "weights_all_zero":
                w[:] = 0
            elif kind == "weights_negative":
                w[row] = -1
            else:
                w[row] = float("nan")
            g["w"][:] = w

    at = f"X[{row}, {col}]"
    if kind.startswith("weights"):
        fault = {"weights_zero_chunk": f"w zero over rows {zero_rows[0]}:{zero_rows[1]}",
                 "weights_all_zero": "w zero everywhere",
                 "weights_negative": f"w[{row}] = -1", "weights_nan": f"w[{row}] = NaN"}[kind]
        expect = "benign" if kind == "weights_zero_chunk" else "detect"
        label_, argv = rng.choice([("fit", _fresh("store.zarr", "--w", "w")),
                                   ("evaluate", ["evaluate", "run", "store.zarr", "--w", "w"])])
        return kind, fault, [Step(label_, argv, expect, ("w", "weight"))], apply
    if kind in ("changed_rows", "changed_labels"):
        arr = "X" if kind == "changed_rows" else "y"
        fault = (f"{arr}[{start}:{start + length}] changed after the run learned them "
                 f"({'scaled by 1.5' if arr == 'X' else 'labels flipped'})")
        steps = _store_commands(rng, ctx, (arr, "chunk", "row", "changed"), "undetectable",
                                "detect", follow=False)
        return kind, fault, steps, apply
    fault = {"nan": f"{at} = NaN", "inf": f"{at} = {value}", "huge": f"{at} = {value}",
             "label_out_of_range": f"y[{row}] = {label}",
             "constant_column": f"X[:, {col}] = 0"}[kind]
    expect = {"huge": "either", "constant_column": "either"}.get(kind, "detect")
    names = (("y",) if kind == "label_out_of_range" else ("X",)) + (
        ("diverg", "learning failed") if expect == "either" else ())
    return kind, fault, _store_commands(rng, ctx, names, expect, expect), apply


# --- run directories


def _rundir_case(rng, ctx) -> tuple:
    kinds = ["runjson_deleted", "runjson_malformed", "runjson_model", "runjson_data",
             "runjson_options", "newest_deleted", "all_deleted", "newest_truncated",
             "newest_bitflip", "newest_directory", "newest_dev_zero", "newest_empty",
             "foreign_checkpoint", "foreign_symlink", "foreign_older", "checksums_deleted",
             "checksums_deleted_theta_shifted", "stale_temporary", "lock_garbage",
             "lock_directory", "lock_held", "readonly_run", "metrics_damaged", "stray_file",
             "run_is_file"]
    kind = rng.choice(kinds)
    garbage = rng.choice(["truncate", "empty", "bytes", "latin1", "list", "null"])
    seed = rng.randrange(2**32)
    commands = [("params", ["params", "run"], "params"),
                ("evaluate", EVAL_TEST, "evaluate"),
                ("resume", RESUME, None)]
    label, argv, ref = rng.choice(commands)
    expect = {
        "runjson_deleted": "same", "runjson_malformed": "same", "runjson_model": "same",
        "runjson_data": "same", "runjson_options": "same",
        "newest_deleted": "warn", "newest_truncated": "warn", "newest_bitflip": "warn",
        "newest_directory": "warn", "newest_dev_zero": "warn", "newest_empty": "warn",
        "all_deleted": "detect", "foreign_checkpoint": "detect", "foreign_symlink": "detect",
        # a checkpoint without its checksum index is damaged, like a bit flip: the previous
        # one is used, with a warning naming it (README, "Checkpoints")
        "foreign_older": "detect", "checksums_deleted": "warn",
        "checksums_deleted_theta_shifted": "warn", "stale_temporary": "same",
        "lock_garbage": "same", "lock_directory": "either", "lock_held": "same",
        "readonly_run": "same", "metrics_damaged": "same", "stray_file": "same",
        "run_is_file": "detect"}[kind]
    if label == "resume":  # a fit's summary has no reference: judge by the exit alone
        expect = {"same": "either", "warn": "warn"}.get(expect, expect)
        if kind in ("lock_held", "readonly_run"):
            expect = "detect"
        if kind in ("runjson_model", "runjson_data"):
            expect = "either"
    names = ("run", "checkpoint", "run.json")
    fault = kind.replace("_", " ")

    def apply(case: Path, ctx) -> None:
        r = random.Random(seed)
        run = case / "run"
        ck = run / "checkpoint.npz"
        if kind == "runjson_deleted":
            (run / "run.json").unlink()
        elif kind == "runjson_malformed":
            _malform(run / "run.json", garbage, r)
        elif kind == "runjson_model":
            _edit_json(run / "run.json", lambda d: d.__setitem__("model", "linear")
                       if "model" in d else d["fit_options"].__setitem__("model", "linear"))
            _edit_json(run / "run.json",
                       lambda d: d.get("fit_options", {}).__setitem__("model", "linear"))
        elif kind == "runjson_data":
            _edit_json(run / "run.json", lambda d: d.__setitem__("data", "elsewhere.zarr"))
        elif kind == "runjson_options":
            _edit_json(run / "run.json", lambda d: d["fit_options"].update(
                batch_size="abc", lr=-1, epochs=None))
        elif kind == "newest_deleted":
            ck.unlink()
        elif kind == "all_deleted":
            for p in run.glob("checkpoint*.npz"):
                p.unlink()
        elif kind == "newest_truncated":
            with open(ck, "r+b") as fh:
                fh.truncate(r.randrange(1, ck.stat().st_size))
        elif kind == "newest_bitflip":
            data = bytearray(ck.read_bytes())
            at = r.randrange(len(data))
            data[at] ^= 1 << r.randrange(8)
            ck.write_bytes(bytes(data))
        elif kind == "newest_directory":
            ck.unlink()
            ck.mkdir()
        elif kind == "newest_dev_zero":
            ck.unlink()
            ck.symlink_to("/dev/zero")
        elif kind == "newest_empty":
            ck.write_bytes(b"")
        elif kind == "foreign_checkpoint":
            shutil.copyfile(case / "other" / "checkpoint.npz", ck)
        elif kind == "foreign_symlink":
            ck.unlink()
            ck.symlink_to(case / "other" / "checkpoint.npz")
        elif kind == "foreign_older":
            ck.unlink()
            shutil.copyfile(case / "other" / "checkpoint.npz", run / "checkpoint.1.npz")
        elif kind.startswith("checksums_deleted"):
            _strip_checksums(ck, shift=kind.endswith("shifted"))
        elif kind == "stale_temporary":
            (run / ".checkpoint-12345.npz.tmp").write_bytes(b"partial")
        elif kind == "lock_garbage":
            (run / ".lock").write_bytes(b"\xff\xfe not a pid")
        elif kind == "lock_directory":
            (run / ".lock").unlink(missing_ok=True)
            (run / ".lock").mkdir()
        elif kind == "lock_held":
            ctx["holders"].append(_hold_lock(run / ".lock"))
        elif kind == "readonly_run":
            for p in [run, *run.iterdir()]:
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            if os.geteuid() == 0 and shutil.which("chattr"):  # root ignores the modes
                subprocess.run(["chattr", "+i", str(run)], check=True)
                ctx["immutable"].append(run)
        elif kind == "metrics_damaged":
            _malform(run / "metrics.jsonl", garbage, r)
        elif kind == "stray_file":
            (run / "notes.txt").write_text("mine\n")
        elif kind == "run_is_file":
            shutil.rmtree(run)
            run.write_text("not a run\n")

    if expect == "warn":
        names = ("checkpoint",)
    return kind, fault, [Step(label, argv, expect, names, ref)], apply


def _strip_checksums(path: Path, *, shift: bool) -> None:
    """Rewrite a checkpoint without its checksum index (and θ + 0.5 with ``shift``)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in arrays.items():
        if value.dtype.kind == "U" and value.ndim == 0:
            with contextlib.suppress(ValueError):
                meta = json.loads(str(value[()]))
                if isinstance(meta, dict) and "checksums" in meta:
                    del meta["checksums"]
                    arrays[key] = np.array(json.dumps(meta, allow_nan=True))
        elif shift and key.split("/")[-1] == "theta":
            arrays[key] = value + 0.5
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _hold_lock(path: Path) -> subprocess.Popen:
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    proc.stdout.readline()
    return proc


# --- flags and config files

#: (option, extra options it needs); the value is drawn from ABSURD
NUMERIC_OPTIONS = [
    ("batch-size", []), ("epochs", []), ("lr", []), ("damping", []), ("floor", []),
    ("l2", []), ("seed", []), ("checkpoint-every", []), ("checkpoint-seconds", []),
    ("keep-checkpoints", []), ("drift-probes", []), ("divergence-factor", []), ("tol", []),
    ("max-samples", []), ("fisher-every", []), ("rewhiten-every", []), ("half-life", []),
    ("mc-samples", ["--metric", "monte-carlo"]), ("read-buffer-bytes", []),
    ("log-every", []), ("progress-seconds", []), ("val-every", ["--val", "store.zarr"]),
    ("lbfgs-rounds", ["--optimizer", "lbfgs"]), ("lbfgs-iters", ["--optimizer", "lbfgs"]),
    ("lbfgs-tol", ["--optimizer", "lbfgs"]), ("lbfgs-gtol", ["--optimizer", "lbfgs"]),
    ("lbfgs-memory", ["--optimizer", "lbfgs"]), ("window", ["--optimizer", "lbfgs"]),
    ("shuffle-window", ["--follow", "--idle-timeout", "0.5"]),
    ("poll-seconds", ["--follow", "--idle-timeout", "0.5"]),
]  # not --idle-timeout: a long one is a legitimate wait for rows, not a hang
ABSURD = ["0", "-1", "1e20", "99999999999999999999", "nan", "inf", "-inf", "1e-300", "0.5",
          "-0"]
# ("1_000" is not here: Python reads it as 1000, as the user meant, PEP 515)
WRONG_TYPES = ["abc", "1,5", "[1]", "", "0x10", "True", "\u00e9"]


def _flags_case(rng, ctx) -> tuple:
    kinds = ["absurd"] * 4 + ["wrong_type"] * 2 + [
             "unknown_flag", "config_non_utf8", "config_syntax",
             "config_unknown_key", "config_wrong_type", "config_absurd", "config_directory",
             "config_missing", "config_fifo", "config_empty", "config_bad_data"]
    kind = rng.choice(kinds)
    option, needs = rng.choice(NUMERIC_OPTIONS)
    key = option.replace("-", "_")
    names = (f"--{option}", key)
    base = ["fit", "store.zarr", *FIT, "--epochs", "1", "--out", "new", "--overwrite"]
    config = []
    if kind == "absurd":
        value = rng.choice(ABSURD)
        argv = [*base, *needs, f"--{option}={value}"]
        return kind, f"--{option} {value}", [Step("fit", argv, "either", names)], None
    if kind == "wrong_type":
        value = rng.choice(WRONG_TYPES)
        argv = [*base, *needs, f"--{option}={value}"]
        return kind, f"--{option} {value!r}", [Step("fit", argv, "detect", names)], None
    if kind == "unknown_flag":
        argv = [*base, "--no-such-option", "1"]
        return kind, "--no-such-option 1", [Step("fit", argv, "detect", ("--no-such",))], None
    toml = 'data = "store.zarr"\nmodel = "logistic"\nepochs = 1\n'
    body = {
        "config_non_utf8": (toml + 'note = "caf\xe9"\n').encode("latin-1"),
        "config_syntax": (toml + "epochs = = 2\n").encode(),
        "config_unknown_key": (toml + "epcohs = 2\n").encode(),
        "config_wrong_type": (toml.replace("epochs = 1", "") + f"{key} = "
                              + rng.choice(['"abc"', "[1, 2]", "true", "{a = 1}"])
                              + "\n").encode(),
        "config_absurd": (toml.replace("epochs = 1", "") + f"{key} = "
                          + rng.choice(["0", "-1", "1e20", "nan", "inf", "1e-300",
                                        "9223372036854775807"]) + "\n").encode(),
        "config_empty": b"",
        "config_bad_data": b'data = "no-such.zarr"\nmodel = "logistic"\n',
    }.get(kind)
    expect = {"config_unknown_key": "detect", "config_absurd": "either",
              "config_empty": "benign"}.get(kind, "detect")
    names = ("cfg.toml",) + ((key,) if kind in ("config_wrong_type", "config_absurd") else ())
    if kind == "config_unknown_key":
        names = ("epcohs",)
    if kind == "config_bad_data":
        names = ("no-such.zarr",)
    extra = needs if kind in ("config_wrong_type", "config_absurd") else []
    argv = ["fit", "--config", "cfg.toml", "--out", "new", "--overwrite", "--progress", "never",
            "--batch-size", "500", *extra]
    if kind == "config_empty":
        argv = [*argv, "store.zarr", "--model", "logistic", "--epochs", "1"]
    config = body

    def apply(case: Path, ctx) -> None:
        path = case / "cfg.toml"
        if kind == "config_directory":
            path.mkdir()
        elif kind == "config_fifo":
            os.mkfifo(path)
        elif kind != "config_missing":
            path.write_bytes(config)

    fault = kind.replace("_", " ") + (f" ({key})" if kind in ("config_wrong_type",
                                                               "config_absurd") else "")
    return kind, fault, [Step("fit", argv, expect, names)], apply


# --- signals


def _signals_case(rng, ctx) -> tuple:
    config = rng.choice(sorted(SIGNAL_CONFIGS))
    sig = rng.choice(["SIGINT", "SIGTERM"])
    moment = rng.choice(["startup", "random", "mid_fit", "mid_fit", "after_summary", "double"])
    # start-up: from the process's start; random: anywhere in the reference run's wall time;
    # mid_fit and double: after the run's log appears, within the fit's own seconds
    delay = {"startup": rng.uniform(0.0, 0.6), "after_summary": 0.0,
             "random": rng.uniform(0.0, ctx["signal_seconds"][config])}.get(
        moment, rng.uniform(0.0, ctx["fit_seconds"][config]))
    kind = f"{config}_{moment}"
    after = " after the log appeared" if moment in ("mid_fit", "double") else ""
    fault = f"{sig} {moment} ({delay:.2f} s{after}) into fit ({config})"
    argv = ["fit", ctx["big"], *SIGNAL_CONFIGS[config], "--out", "sigrun", "--overwrite"]
    steps = [Step("signal", argv, "signal", ("signal", "SIGINT", "SIGTERM", "stop", "interrupt")),
             Step("resume", ["fit", ctx["big"], "--out", "sigrun", "--resume", "--progress",
                             "never"], "either", ("run", "checkpoint", "resume")),
             Step("params", ["params", "sigrun"], "same", ("sigrun",), f"params-{config}")]
    return kind, fault, steps, None, {"sig": sig, "delay": delay, "moment": moment}


MAKERS = {"metadata": _metadata_case, "chunks": _chunk_case, "values": _values_case,
          "rundir": _rundir_case, "flags": _flags_case, "signals": _signals_case}


def make_case(seed: int, index: int, categories, ctx) -> Case:
    """Case ``index`` of ``seed``: the same fault every time."""
    category = categories[index % len(categories)]
    rng = random.Random(f"{seed}:{index}")
    made = MAKERS[category](rng, ctx)
    kind, fault, steps, apply = made[:4]
    return Case(index, category, f"{category}.{kind}", fault, steps, apply,
                made[4] if len(made) > 4 else None)


# ----------------------------------------------------------------------------- running


def _limited(argv: list) -> list:
    """``argv`` under a 4 GiB address-space limit (``prlimit`` execs it: signals reach it)."""
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--as={MEMORY_LIMIT}", *argv] if prlimit else argv


def _env(ctx) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NUMBA_CACHE_DIR"] = ctx["numba_cache"]
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("NATGRAD_STREAM_CONFIG", None)
    return env


def run_command(argv, cwd, ctx, timeout, sig=None) -> dict:
    """Run one CLI command; with ``sig``, signal it as the case says. Returns the record."""
    proc = subprocess.Popen(_limited(_cli(*argv)), cwd=cwd, env=_env(ctx),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True)
    start = time.monotonic()
    out, err, timed_out, sent_at = "", "", False, None
    try:
        if sig is not None:
            number = getattr(signal, sig["sig"])
            if sig["moment"] == "after_summary":
                out = proc.stdout.readline()  # the summary line: then signal at once
            elif sig["moment"] in ("mid_fit", "double"):
                log = Path(cwd) / "sigrun" / "metrics.jsonl"
                while not log.exists() and proc.poll() is None \
                        and time.monotonic() - start < timeout / 2:
                    time.sleep(0.01)
                time.sleep(sig["delay"])
            else:
                time.sleep(sig["delay"])
            with contextlib.suppress(ProcessLookupError):
                sent_at = time.monotonic() - start
                proc.send_signal(number)
                if sig["moment"] == "double":
                    time.sleep(0.05)
                    proc.send_signal(number)
        more_out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
        out += more_out
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        more_out, err = proc.communicate()
        out += more_out
    return {"argv": argv, "rc": proc.returncode, "stdout": out, "stderr": err,
            "timed_out": timed_out, "seconds": round(time.monotonic() - start, 2),
            "signal_sent_at": sent_at}


def _names(name: str, text: str) -> bool:
    """Whether ``text`` names ``name``: a short name (an array) as a word, in its case."""
    if len(name) <= 2:
        return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None
    return name.lower() in text.lower()


def _is_warning(line: str) -> bool:
    return "warning" in line.lower()


def classify(step: Step, rec: dict, reference: str | None = None,
             python_start_up: float = 0.0) -> str:
    """The outcome of one step (see the module's docstring). ``python_start_up``: seconds
    the interpreter takes to start before the package's first line runs (a signal then
    meets Python's default actions: a documented window no package code can close).
    """
    if rec["timed_out"]:
        return "hang"
    rc, err = rec["rc"], rec["stderr"]
    sent = rec.get("signal_sent_at")
    if sent is not None and sent < python_start_up and rc in (-2, -15) and not err.strip():
        return "python_start_up"
    if "Traceback" in err or rc not in DOCUMENTED_EXITS:
        return "traceback"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not _is_warning(ln)]
    warned = [ln for ln in lines if _is_warning(ln)]

    def named(text: str) -> bool:
        return not step.names or any(_names(n, text) for n in step.names)

    if rc == 0:
        if step.expect == "detect":
            return "silent_wrong"
        if step.expect == "undetectable":
            return "undetectable"
        if step.expect == "warn":
            return "ok" if any(named(ln) for ln in warned) else "silent_wrong"
        if step.expect == "same" and reference is not None:
            same = rec["stdout"].strip() == reference.strip()
            return "ok" if same or warned else "silent_wrong"
        return "ok"
    if step.expect == "signal" and rc == 130:
        return "ok" if len(errors) <= 2 else "unclear"
    message = " ".join(errors)
    if not errors or len(errors) > 2 or not named(message):
        return "unclear"
    return "refused" if step.expect == "benign" else "clean_error"


def _worst(outcomes) -> str:
    return min(outcomes, key=OUTCOMES.index)


def run_case(case: Case, ctx, timeout: float, keep: bool) -> dict:
    workdir = Path(ctx["workdir"]) / f"case-{case.index:05d}"
    shutil.copytree(Path(ctx["workdir"]) / "template", workdir, symlinks=True)
    holders, immutable = [], []
    ctx = {**ctx, "holders": holders, "immutable": immutable}
    steps = []
    try:
        if case.apply is not None:
            case.apply(workdir, ctx)
        for step in case.steps:
            if step.label == "resume" and case.signal is not None:
                if not (workdir / "sigrun" / "checkpoint.npz").exists():
                    break  # stopped before its first checkpoint: nothing to resume
            rec = run_command(step.argv, workdir, ctx, timeout,
                              case.signal if step.label == "signal" else None)
            reference = ctx["reference"].get(step.reference) if step.reference else None
            outcome = classify(step, rec, reference, ctx.get("python_start_up", 0.0))
            steps.append({"step": step.label, "outcome": outcome, "expect": step.expect,
                          "command": "natgrad-stream " + " ".join(map(str, step.argv)),
                          "exit_code": rec["rc"], "seconds": rec["seconds"],
                          "stderr_tail": rec["stderr"].splitlines()[-4:],
                          "stdout_tail": rec["stdout"][-300:]})
            if rec["rc"] != 0 and case.signal is None:
                break
            if case.signal is not None and (outcome in ("traceback", "hang")
                                            or (step.label == "resume" and rec["rc"] != 0)):
                break
    except Exception as exc:  # a fault the harness could not apply: report, not crash
        steps.append({"step": "apply", "outcome": "harness_error",
                      "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for p in immutable:
            subprocess.run(["chattr", "-i", str(p)], check=False)
        for h in holders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(h.pid, signal.SIGKILL)
            h.wait()
            h.stdout.close()
        if not keep:
            for p in [workdir, *workdir.rglob("*")]:  # undo read-only faults first
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        p.chmod(0o755)
            shutil.rmtree(workdir, ignore_errors=True)
    outcomes = [s["outcome"] for s in steps]
    worst = "harness_error" if "harness_error" in outcomes else _worst(outcomes or ["ok"])
    failing = next((s for s in steps if s["outcome"] == worst), None)
    return {"case": case.index, "category": case.category, "kind": case.kind,
            "fault": case.fault, "outcome": worst, "step": failing and failing["step"],
            "steps": steps, "dir": str(workdir) if keep else None}


# ----------------------------------------------------------------------------- templates


def _must(rec: dict, what: str) -> dict:
    if rec["rc"] != 0:
        raise SystemExit(f"fuzz: building the template failed at {what}: exit {rec['rc']}\n"
                         f"{rec['stderr']}")
    return rec


def build_templates(workdir: Path, ctx: dict, timeout: float, categories, jobs: int) -> None:
    """The stores, the runs and the reference outputs every case starts from (independent
    ones built in parallel).
    """
    import numpy as np
    import zarr

    zarr.config.set({"array.write_empty_chunks": True})  # every chunk written, zeros too
    tpl = workdir / "template"
    tpl.mkdir()
    t = max(timeout, 120)
    ref = ctx["reference"]
    big = workdir / "big.zarr"
    ctx["big"] = str(big)

    def store() -> None:
        _must(run_command(["make-data", "store.zarr", "--task", "logistic", "--rows", ROWS,
                           "--features", FEATURES, "--chunk-rows", CHUNK, "--test-rows", 500,
                           "--seed", 3], tpl, ctx, t), "make-data")
        g = zarr.open_group(str(tpl / "store.zarr"), mode="r+")
        w = g.create_array("w", shape=(ROWS,), chunks=(CHUNK,), dtype="float32",
                           fill_value=0.0)
        w[:] = np.ones(ROWS, dtype="float32")

    def big_store() -> None:
        _must(run_command(["make-data", big, "--task", "logistic", "--rows", BIG_ROWS,
                           "--features", FEATURES, "--chunk-rows", BIG_CHUNK, "--seed", 5],
                          workdir, ctx, t), "make-data big")

    def fitted(name: str, seed: int) -> None:
        _must(run_command(["fit", "store.zarr", *FIT, "--epochs", "1", "--seed", seed,
                           "--out", name], tpl, ctx, t), f"fit {name}")
        _must(run_command(["fit", "store.zarr", "--out", name, "--resume", "--epochs", "2",
                           "--progress", "never"], tpl, ctx, t), f"resume {name}")
        if name == "run":
            ref["params"] = _must(run_command(["params", "run"], tpl, ctx, t),
                                  "params")["stdout"]
            ref["evaluate"] = _must(run_command(EVAL_TEST, tpl, ctx, t), "evaluate")["stdout"]
            help_text = run_command(["evaluate", "--help"], tpl, ctx, t)["stdout"]
            ctx["has_train_flag"] = "--train" in help_text

    def signal_reference(name: str) -> None:
        rec = _must(run_command(["fit", big, *SIGNAL_CONFIGS[name], "--out", f"sig-{name}"],
                                workdir, ctx, t), f"fit sig-{name}")
        ctx["signal_seconds"][name] = rec["seconds"]
        ctx["fit_seconds"][name] = json.loads(rec["stdout"].splitlines()[-1])["seconds"]
        ref[f"params-{name}"] = _must(run_command(["params", f"sig-{name}"], workdir, ctx, t),
                                      "params")["stdout"]

    signals = "signals" in categories
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for f in [pool.submit(store)] + ([pool.submit(big_store)] if signals else []):
            f.result()
        later = [pool.submit(fitted, "run", 0), pool.submit(fitted, "other", 7)]
        if signals:
            later += [pool.submit(signal_reference, name) for name in SIGNAL_CONFIGS]
        for f in later:
            f.result()
    for p in tpl.rglob(".lock"):
        p.unlink()


# ----------------------------------------------------------------------------- main


def summarize(results: list, args, seconds: float, ctx) -> dict:
    per_category, per_kind, totals = {}, {}, {o: 0 for o in OUTCOMES}
    failures = []
    for r in sorted(results, key=lambda r: r["case"]):
        cat = per_category.setdefault(r["category"], {"cases": 0, "outcomes": {}})
        cat["cases"] += 1
        cat["outcomes"][r["outcome"]] = cat["outcomes"].get(r["outcome"], 0) + 1
        key = f"{r['kind']}@{r['step']}"
        kind = per_kind.setdefault(key, {})
        kind[r["outcome"]] = kind.get(r["outcome"], 0) + 1
        totals[r["outcome"]] = totals.get(r["outcome"], 0) + 1
        if r["outcome"] in FAILURES or r["outcome"] == "harness_error":
            s = next(s for s in r["steps"] if s["outcome"] == r["outcome"])
            failures.append({
                "case": r["case"], "outcome": r["outcome"], "kind": key, "fault": r["fault"],
                "command": s.get("command"), "exit_code": s.get("exit_code"),
                "stderr_tail": s.get("stderr_tail", [s.get("error")]),
                **({"stdout_tail": s["stdout_tail"]} if r["outcome"] == "silent_wrong" else {}),
                "reproduce": (f"python scripts/fuzz.py --seed {args.seed} --categories "
                              f"{','.join(args.categories)} --only {r['case']} --keep")})
    return {"seed": args.seed, "cases": len(results), "categories": list(args.categories),
            "seconds": round(seconds, 1),
            "python_start_up_seconds": round(ctx.get("python_start_up", 0.0), 3),
            "outcomes": {k: v for k, v in totals.items() if v},
            "per_category": per_category, "per_kind": dict(sorted(per_kind.items())),
            "failures": failures}


def run(args) -> dict:
    """Build the templates, run the cases, return the summary."""
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="natgrad-fuzz-", dir=args.workdir))
    ctx = {"workdir": str(workdir), "reference": {}, "signal_seconds": {}, "fit_seconds": {},
           "numba_cache": args.numba_cache or str(Path(tempfile.gettempdir())
                                                  / "natgrad-fuzz-numba")}
    try:
        ctx["python_start_up"] = python_start_up()
        build_templates(workdir, ctx, args.timeout, args.categories, args.jobs)
        indices = args.only if args.only else range(args.cases)
        cases = [make_case(args.seed, i, args.categories, ctx) for i in indices]
        results = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_case, c, ctx, args.timeout, args.keep) for c in cases]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                r = future.result()
                results.append(r)
                if args.verbose or r["outcome"] in FAILURES:
                    print(f"[{done}/{len(cases)}] case {r['case']} {r['kind']}@{r['step']}: "
                          f"{r['outcome']} ({r['fault']})", file=sys.stderr, flush=True)
        return summarize(results, args, time.monotonic() - start, ctx)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"fuzz: kept {workdir}", file=sys.stderr)


def python_start_up(runs: int = 5) -> float:
    """The longest of ``runs`` start-ups of the interpreter up to the entry point's first
    line (``python -c "import natgrad_stream._entry"``, site and all): a signal sent
    sooner may meet Python's default action (status −2 or −15, no output).
    """
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import natgrad_stream._entry"],
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        times.append(time.monotonic() - t)
    return max(times)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--categories", default=",".join(CATEGORIES),
                   help=f"comma-separated subset of {','.join(CATEGORIES)}")
    p.add_argument("--jobs", type=int, default=2, help="cases run in parallel")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds per command before it counts as a hang")
    p.add_argument("--only", default=None, help="comma-separated case indices to run")
    p.add_argument("--keep", action="store_true", help="keep the case directories")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    p.add_argument("--workdir", default=None, help="parent of the temporary directory")
    p.add_argument("--numba-cache", default=None, help="NUMBA_CACHE_DIR shared by the cases")
    p.add_argument("--verbose", action="store_true", help="one stderr line per case")
    args = p.parse_args(argv)
    args.categories = [c for c in args.categories.split(",") if c]
    unknown = sorted(set(args.categories) - set(CATEGORIES))
    if unknown:
        p.error(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    args.only = [int(i) for i in args.only.split(",")] if args.only else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = run(args)
    text = json.dumps(summary, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
