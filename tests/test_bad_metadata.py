"""Metadata zarr cannot read is named the same way on every path (fuzz, issue 19: a fresh
``fit`` said ``array 'y': has metadata zarr cannot read (...)``; ``--resume``, follow mode
and a damaged group ``zarr.json`` passed zarr's own words on, naming nothing).
"""

import json

import numpy as np
import pytest

from natgrad_stream.app.cli import main

from .conftest import write_group


def _store_and_run(tmp_path, capsys, *fit_args):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3))
    y = (X[:, 0] > 0).astype(np.float64)
    data = write_group(tmp_path / "d.zarr", X=X, y=y)
    run = tmp_path / "run"
    assert main(["fit", str(data), "--model", "logistic", "--out", str(run),
                 "--progress", "never", *(fit_args or ("--epochs", "1"))]) == 0
    capsys.readouterr()
    return data, run


def _edit(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("first", "args"), [
    ((), ["--resume", "--epochs", "2"]),
    (("--follow", "--idle-timeout", "0.5"), ["--resume", "--idle-timeout", "0.5"])])
def test_an_unreadable_array_is_named_on_resume_and_in_follow_mode(tmp_path, capsys, first,
                                                                   args):
    data, run = _store_and_run(tmp_path, capsys, *first)
    _edit(data / "y" / "zarr.json",
          lambda m: m["codecs"].append({"name": "no-such-codec", "configuration": {}}))
    code = main(["fit", str(data), "--out", str(run), "--progress", "never", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "array 'y': has metadata zarr cannot read" in err


def test_an_unreadable_group_is_named(tmp_path, capsys):
    data, run = _store_and_run(tmp_path, capsys)
    (data / "zarr.json").write_text("[1, 2, 3]")
    for argv in (["fit", str(data), "--model", "logistic", "--out", str(tmp_path / "new")],
                 ["fit", str(data), "--out", str(run), "--resume", "--epochs", "2"]):
        code = main([*argv, "--progress", "never"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{data} is not a readable Zarr group" in err
