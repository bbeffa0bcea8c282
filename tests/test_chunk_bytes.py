"""Default chunks sized in bytes (issue 18's "memory in bytes", follow-up): ``make-data`` and
in-memory arrays cut wide data into chunks of at most ``DEFAULT_CHUNK_BYTES`` of features,
so the default read plan fits the default read budget; narrow data keep 65,536-row chunks,
bit for bit.
"""

import json
import logging

import numpy as np
import pytest
import zarr

from natgrad_stream._constants import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_READ_BUFFER_BYTES,
)
from natgrad_stream.app.cli import main
from natgrad_stream.data import ArraySource, as_source
from natgrad_stream.data.budget import default_chunk_rows
from natgrad_stream.data.datasets import dataset_chunk_rows, make_dataset


class Shape:
    """A ``(n, d)`` array-like of a dtype that is never read (plans are arithmetic)."""

    def __init__(self, n, d, dtype=np.float32):
        self.shape, self.dtype = ((n, d) if d else (n,)), np.dtype(dtype)

    def __getitem__(self, key):  # pragma: no cover - plans never read
        raise AssertionError("read")


def test_default_chunk_rows():
    assert default_chunk_rows(240 * 4) == DEFAULT_CHUNK_ROWS  # 60 MiB exactly
    assert default_chunk_rows(1) == DEFAULT_CHUNK_ROWS
    assert default_chunk_rows(241 * 4) == 64_512
    assert default_chunk_rows(3000 * 4) == 5_120
    for row in (241 * 4, 999 * 8, 3000 * 4, 12_345 * 4, 10**6):
        r = default_chunk_rows(row)
        assert r % 1024 == 0 and r >= 1024
        assert r * row <= DEFAULT_CHUNK_BYTES or r == 1024
        assert (r + 1024) * row > DEFAULT_CHUNK_BYTES
    assert default_chunk_rows(10**6) == 1024  # wider than 60 MiB / 1,024: the floor
    assert dataset_chunk_rows(120, "float64") == DEFAULT_CHUNK_ROWS
    assert dataset_chunk_rows(121, "float64") < DEFAULT_CHUNK_ROWS


@pytest.mark.parametrize("d", [241, 700, 3000, 10_000, 14_000])
def test_the_default_plan_fits_the_default_budget(d):
    """With default chunks, in memory or written by make-data (float32 features, uint8
    labels), the default plan (4 buffers of 2 chunks) fits the default budget untouched.
    """
    src = ArraySource(Shape(10**7, d), Shape(10**7, 0, np.uint8))
    assert src.chunk_rows == dataset_chunk_rows(d)
    plan = src.read_plan()
    assert (plan.chunks_per_read, plan.prefetch, plan.over_budget) == (2, 2, False)
    assert plan.nbytes <= DEFAULT_READ_BUFFER_BYTES


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int64, bool])
def test_in_memory_wide_arrays_are_chunked_within_the_target(dtype):
    X = np.zeros((10, 3000), dtype=dtype)
    for src in (ArraySource(X), as_source(X), as_source((X, np.zeros(10)))):
        assert src.chunk_rows * 3000 * src.x_dtype.itemsize <= DEFAULT_CHUNK_BYTES
        assert src.chunk_rows % 1024 == 0
    assert ArraySource(X, chunk_rows=65_536).chunk_rows == 65_536  # explicit wins


def test_in_memory_narrow_arrays_keep_65536_rows():
    for d, dtype in ((100, np.float64), (120, np.float64), (240, np.float32), (3, np.int8)):
        assert ArraySource(np.zeros((5, d), dtype=dtype)).chunk_rows == DEFAULT_CHUNK_ROWS


def test_wide_in_memory_data_fit_the_default_budget():
    """700 float64 features: 65,536-row chunks took 367 MB, three of them over 512 MiB."""
    src = ArraySource(Shape(100_000, 700, np.float64), Shape(100_000, 0, np.float64))
    assert not src.read_plan().over_budget
    old = ArraySource(Shape(100_000, 700, np.float64), Shape(100_000, 0, np.float64),
                      chunk_rows=65_536)
    assert old.read_plan().over_budget


class CheapTask:
    """A generator of the task interface without the d × d feature model (its QR takes
    20 s at d = 3,000 on a loaded 2-core machine): only the chunking is under test here.
    """

    Y_DTYPE = "uint8"

    def true_params(self, features, seed):
        self.d = features
        return {}

    def sample_chunk(self, params, rng, n):
        return rng.standard_normal((n, self.d)), rng.integers(0, 2, n).astype(np.uint8)


def test_make_dataset_wide_chunks_within_the_target(tmp_path, monkeypatch):
    from natgrad_stream.data import datasets

    monkeypatch.setattr(datasets, "task_generator", lambda task: CheapTask())
    g = make_dataset(tmp_path / "w.zarr", task="logistic", rows=6_000, features=3000,
                     test_rows=100, seed=1)
    rows = g["X"].chunks[0]
    assert rows == 5_120 == g.attrs["natgrad_stream"]["chunk_rows"]
    assert rows * 3000 * 4 <= DEFAULT_CHUNK_BYTES
    assert g["y"].chunks == (rows,)
    assert g["X_test"].chunks == (100, 3000)


def test_make_dataset_narrow_is_unchanged(tmp_path):
    """At d = 100: 65,536-row chunks, the very values and attributes of chunk_rows=65536."""
    kw = dict(task="logistic", rows=70_000, features=100, test_rows=10, seed=4)
    a = make_dataset(tmp_path / "a.zarr", **kw)
    b = make_dataset(tmp_path / "b.zarr", chunk_rows=65_536, **kw)
    assert a["X"].chunks == (65_536, 100) and a["y"].chunks == (65_536,)
    assert dict(a.attrs) == dict(b.attrs)
    for name in ("X", "y", "X_test", "y_test"):
        assert a[name].chunks == b[name].chunks
        assert np.array_equal(a[name][:], b[name][:])
        assert a[name][:].tobytes() == b[name][:].tobytes()


def test_make_data_summary_reports_the_chunks(tmp_path, capsys):
    def made(*args):
        assert main([str(a) for a in args]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    narrow = made("make-data", tmp_path / "n.zarr", "--task", "linear", "--rows", 100,
                  "--features", 5)
    assert narrow["chunk_rows"] == DEFAULT_CHUNK_ROWS and "chunk_note" not in narrow
    wide = made("make-data", tmp_path / "w.zarr", "--task", "linear", "--rows", 100,
                "--features", 300)
    assert wide["chunk_rows"] == 52_224
    assert "52,224 rows" in wide["chunk_note"] and "--chunk-rows 65536" in wide["chunk_note"]
    given = made("make-data", tmp_path / "g.zarr", "--task", "linear", "--rows", 100,
                 "--features", 300, "--chunk-rows", 65_536)
    assert given["chunk_rows"] == 65_536 and "chunk_note" not in given
    assert zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["X"].chunks == (100, 300)


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_default_fit_on_wide_make_data_output_stays_within_the_budget(tmp_path):
    """700 float64 features, 32,000 rows: 65,536-row chunks (the whole 179 MB of data in one)
    exceeded the budget three times over and warned; default chunks of 10,240 rows fit it.
    """
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model

    path = tmp_path / "w.zarr"
    g = make_dataset(path, task="logistic", rows=32_000, features=700, dtype="float64", seed=2)
    assert g["X"].chunks == (10_240, 700)
    seen, logger = Records(), logging.getLogger("natgrad_stream")
    logger.addHandler(seen)
    try:
        learner = NaturalGradientLearner(make_model("logistic", 700)).fit(path, epochs=1)
    finally:
        logger.removeHandler(seen)
    assert learner.state.samples == 32_000
    assert not [m for m in seen.messages if "too large for read_buffer_bytes" in m]
