#!/usr/bin/env python
"""Regenerate the embedded demo dataset ``data/demo.zarr`` (deterministic).

Usage::

    python scripts/make_demo_data.py
"""

from pathlib import Path

from natgrad_stream.data.datasets import make_dataset

DEMO = dict(task="logistic", rows=200_000, features=20, chunk_rows=16_384, test_rows=50_000,
            seed=2013, dtype="float32")

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "data" / "demo.zarr"
    make_dataset(out, overwrite=True, **DEMO)
    print(f"wrote {out}")
