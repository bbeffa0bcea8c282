"""Shared fixtures: small synthetic Zarr datasets made by the project's own generator."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from natgrad_stream.data.datasets import make_dataset


@pytest.fixture(scope="session")
def load_script():
    """``load_script("kill_resume")``: a script of ``scripts/`` imported as a module."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def logistic_zarr(tmp_path_factory):
    """Ill-conditioned logistic data: 60k × 8 train (4,096-row chunks), 40k test."""
    path = tmp_path_factory.mktemp("data") / "logistic.zarr"
    make_dataset(path, task="logistic", rows=60_000, features=8, chunk_rows=4096,
                 test_rows=40_000, seed=3)
    return path


@pytest.fixture(scope="session")
def small_zarr(tmp_path_factory):
    """Tiny logistic data for fast plumbing tests: 5,000 × 3, 512-row chunks."""
    path = tmp_path_factory.mktemp("data") / "small.zarr"
    make_dataset(path, task="logistic", rows=5_000, features=3, chunk_rows=512,
                 test_rows=1_000, seed=1)
    return path


def write_group(path, **arrays):
    """Write NumPy arrays into a new Zarr v3 group with 100-row chunks."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, a in arrays.items():
        a = np.asarray(a)
        chunks = (min(100, max(a.shape[0], 1)),) + a.shape[1:]
        g.create_array(name, shape=a.shape, chunks=chunks, dtype=a.dtype)[...] = a
    return path


@pytest.fixture
def package_logging_as_imported():
    """The package's loggers as a fresh import leaves them, for tests that capture its
    records with ``caplog``: a command line run in this process (an earlier test) has set
    ``natgrad_stream`` not to propagate and ``natgrad_stream.fit`` to WARNING.
    """
    import logging

    pkg, fit = logging.getLogger("natgrad_stream"), logging.getLogger("natgrad_stream.fit")
    saved = pkg.propagate, pkg.level, fit.level
    pkg.propagate = True
    pkg.setLevel(logging.NOTSET)
    fit.setLevel(logging.NOTSET)
    yield
    pkg.propagate = saved[0]
    pkg.setLevel(saved[1])
    fit.setLevel(saved[2])


@pytest.fixture
def settling_logistic(monkeypatch):
    """``--structure auto``'s thresholds scaled down (full up to 10 parameters, 40 for a
    Hessian metric on 20 rows per parameter) and logistic data on which a learner of
    P = 16 settles from the diagonal on the full metric: ``(X, y)``, (320, 15) and (320,).
    """
    from natgrad_stream.training import options as opts

    monkeypatch.setattr(opts, "AUTO_FULL_MAX_PARAMS", 10)
    monkeypatch.setattr(opts, "AUTO_FULL_HESSIAN_MAX_PARAMS", 40)
    rng = np.random.default_rng(0)
    d = 15
    X = rng.standard_normal((20 * (d + 1), d))
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-X @ rng.standard_normal(d) / 2))) * 1.0
    return X, y
