"""FIFOs, devices and sockets are refused before they are opened (issue 19: a chunk that is
a FIFO hung ``fit`` and ``evaluate``, and SIGTERM did not stop them).

The command-line cases run in a child process with a timeout, so a regression fails
instead of hanging the suite.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from natgrad_stream._files import (
    SpecialFileError,
    check_regular,
    check_zarr_metadata,
    open_fd,
    open_regular,
)
from natgrad_stream.app.cli import main
from natgrad_stream.data.datasets import make_dataset

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "natgrad_stream", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    return proc.returncode, proc.stderr


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": warning: " not in ln]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=2000, features=3, chunk_rows=500, seed=1)
    return path


@pytest.fixture
def fitted(store, tmp_path):
    run = tmp_path / "run"
    assert main(["fit", str(store), "--model", "logistic", "--out", str(run), "--epochs", "1",
                 "--progress", "never"]) == 0
    return run


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# -- the helpers -------------------------------------------------------------------------
def test_helpers_refuse_fifos_sockets_devices_and_directories(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SpecialFileError, match="is a FIFO, not a regular file"):
        open_regular(fifo)
    with pytest.raises(SpecialFileError, match="is a FIFO"):  # writing: no reader, no wait
        open_fd(fifo, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with pytest.raises(SpecialFileError, match="is a character device"):
        check_regular("/dev/null")
    with pytest.raises(SpecialFileError, match="is a directory"):
        open_regular(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(SpecialFileError, match="is a socket"):
            check_regular(tmp_path / "sock")
    finally:
        sock.close()
    (tmp_path / "f").write_bytes(b"ok")
    with open_regular(tmp_path / "f") as fh:
        assert fh.read() == b"ok"
    check_regular(tmp_path / "missing")  # missing: the caller reports it


def test_zarr_metadata_check_finds_a_nested_fifo(store):
    check_zarr_metadata(store)
    _fifo(store / "y" / "zarr.json")
    with pytest.raises(SpecialFileError, match=r"y/zarr.json"):
        check_zarr_metadata(store)


# -- the commands ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_chunk_fifo_is_refused_naming_array_and_chunk(store, fitted, tmp_path, command):
    _fifo(store / "X" / "c" / "2" / "0")
    args = (["fit", store, "--model", "logistic", "--out", tmp_path / "r2"]
            if command == "fit" else ["evaluate", fitted, store])
    code, err = _cli(*args)
    assert code == 2 and "Traceback" not in err, err
    (line,) = _error_lines(err)
    assert "array 'X', chunk 2, row 1000" in line and "is a FIFO" in line


def test_chunk_fifo_read_through_zarr_is_refused(tmp_path):
    import zarr

    path = tmp_path / "plain.zarr"  # no compressor: read by zarr, not the direct reader
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    x = g.create_array("X", shape=(400, 2), chunks=(100, 2), dtype="f8", compressors=None)
    x[...] = rng.normal(size=(400, 2))
    y = g.create_array("y", shape=(400,), chunks=(100,), dtype="f8", compressors=None)
    y[...] = rng.integers(0, 2, 400)
    _fifo(path / "y" / "c" / "3")
    code, err = _cli("fit", path, "--model", "logistic", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err, err
    (line,) = _error_lines(err)
    assert "array 'y'" in line and "chunk 3" in line and "is a FIFO" in line


def test_chunk_symlink_to_a_device_is_refused(store, tmp_path):
    chunk = store / "X" / "c" / "1" / "0"
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    code, err = _cli("fit", store, "--model", "logistic", "--out", tmp_path / "run")
    assert code == 2 and "is a character device" in err and "chunk 1" in err, err


def test_metadata_fifo_is_refused(store, tmp_path):
    _fifo(store / "X" / "zarr.json")
    code, err = _cli("fit", store, "--model", "logistic", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err, err
    assert _error_lines(err) == [f"natgrad-stream fit: error: {store}/X/zarr.json: is a "
                                 "FIFO, not a regular file"]


def test_config_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "run.toml")
    code, err = _cli("fit", "--config", tmp_path / "run.toml")
    assert code == 2
    assert err == (f"natgrad-stream fit: error: {tmp_path}/run.toml: is a FIFO, not a "
                   "regular file\n")


@pytest.mark.parametrize("name", ["metrics.jsonl", ".lock"])
def test_run_directory_fifo_is_refused(store, fitted, name):
    _fifo(fitted / name)
    code, err = _cli("fit", store, "--out", fitted, "--resume", "--epochs", 2)
    assert code == 2 and "Traceback" not in err, err
    (line,) = _error_lines(err)
    assert f"{fitted}/{name}: is a FIFO, not a regular file" in line


def test_non_utf8_config_names_the_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_bytes(b"lr = 0.5\n# caf\xe9\n")
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"natgrad-stream fit: error: config {config} is not UTF-8 text")
    assert err.count("\n") == 1


def test_regular_files_still_work(store, fitted, capsys):
    shutil.copytree(store, fitted.parent / "copy.zarr")
    assert main(["evaluate", str(fitted), str(fitted.parent / "copy.zarr")]) == 0
