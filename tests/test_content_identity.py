"""Content identity of the data (issue 19, finding 1): a digest of every chunk a run has
read, in its checkpoints, so a resume, ``evaluate`` on the training data and follow mode
refuse rows changed after the run learned them, wherever they are; rows appended are not a
change. Before, only the leading rows were fingerprinted: each refusal below was a silent
resume (exit 0).
"""

import copy
import json
import pickle

import numpy as np
import pytest
import zarr

from natgrad_stream.checkpoint import load_checkpoint, save_checkpoint
from natgrad_stream.data import append_rows
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.data.digests import ChunkDigests, chunk_digest
from natgrad_stream.data.manifest import write_manifest
from natgrad_stream.errors import DataError

from .test_cli import _digest, run_cli

R = 500


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=4800, features=3, chunk_rows=R, seed=2)
    return path


def _fit(capsys, data, run, *args):
    return run_cli(capsys, "fit", data, "--out", run, *args)


def _scale(data, a, b, name="X"):
    """Change rows ``a:b`` and record the store's manifest again, as a writer changing
    them on purpose would: the store then verifies, and only the run's digests remember
    what it learned from.
    """
    g = zarr.open_group(str(data), mode="r+")
    g[name][a:b] = g[name][a:b] * 2
    write_manifest(data)


def _append(data, tmp_path, a, b):
    """Append rows ``a:b`` of the same generator's longer draw (rows like the others)."""
    more = tmp_path / "more.zarr"
    if not more.exists():
        make_dataset(more, task="logistic", rows=5400, features=3, chunk_rows=R, seed=2)
    src = zarr.open_group(str(more), mode="r")
    append_rows(data, X=src["X"][a:b], y=src["y"][a:b])


def _recorded(run):
    return np.flatnonzero(load_checkpoint(run / "checkpoint.npz")["digests"]["rows"])


def _refused(err, chunk, name="X"):
    line = [ln for ln in err.strip().splitlines() if "warning:" not in ln]
    return (len(line) == 1 and f"array {name!r}, chunk {chunk}: rows {chunk * R}:" in line[0]
            and "changed after the run read them" in line[0])


def test_resume_refuses_rows_changed_beyond_the_first_chunk(data, tmp_path, capsys):
    """Killed mid-epoch, a chunk it learned (not the first) scaled, resumed: refused with
    exit 2 naming array, chunk and rows; the checkpoint is left as it was.
    """
    run = tmp_path / "run"
    code, s, _ = _fit(capsys, data, run, "--model", "logistic", "--epochs", 1,
                      "--max-samples", 3000)
    assert code == 0 and s["interrupted"]
    learned = [c for c in _recorded(run) if c > 0]
    c = int(learned[len(learned) // 2])
    _scale(data, c * R + 10, c * R + 110)
    before = _digest(run / "checkpoint.npz")
    code, _, err = _fit(capsys, data, run, "--resume")
    assert code == 2 and _refused(err, c)
    assert _digest(run / "checkpoint.npz") == before
    _scale(data, c * R + 10, c * R + 110)  # ×2 then back: the same bytes again
    g = zarr.open_group(str(data), mode="r+")
    g["X"][c * R + 10:c * R + 110] = g["X"][c * R + 10:c * R + 110] / 4
    write_manifest(data)
    code, s, _ = _fit(capsys, data, run, "--resume")
    assert code == 0 and s["samples"] == 4800


def test_a_multi_pass_run_compares_every_chunk_it_reads_again(data, tmp_path, capsys):
    """After a complete first pass every chunk is recorded: a change to any of them (here
    the targets of the last, partly filled chunk) is refused when a later pass reads it.
    """
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--epochs", 1)[0] == 0
    assert len(_recorded(run)) == 10
    g = zarr.open_group(str(data), mode="r+")
    g["y"][4700] = 1 - g["y"][4700]
    write_manifest(data)  # (the store's own check would refuse it first)
    code, _, err = _fit(capsys, data, run, "--resume", "--epochs", 3)
    assert code == 2 and _refused(err, 9, "y")


def test_evaluate_on_the_training_data_refuses_a_changed_chunk(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--epochs", 1)[0] == 0
    code, ok, _ = run_cli(capsys, "evaluate", run, data)
    assert code == 0 and ok["n"] == 4800
    _scale(data, 3000, 3100)
    code, _, err = run_cli(capsys, "evaluate", run, data)
    assert code == 2 and _refused(err, 6)
    other = tmp_path / "other.zarr"  # other data: evaluated, not compared
    make_dataset(other, task="logistic", rows=1000, features=3, chunk_rows=R, seed=9)
    assert run_cli(capsys, "evaluate", run, other)[0] == 0


def test_appended_rows_growing_the_last_chunk_are_not_a_change(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--epochs", 1)[0] == 0
    _append(data, tmp_path, 4800, 4950)  # chunk 9: 300 → 450 rows
    code, s, err = _fit(capsys, data, run, "--resume", "--epochs", 2)
    assert code == 0 and s["samples"] == 4800 + 4950, err
    assert load_checkpoint(run / "checkpoint.npz")["digests"]["rows"][9] == 450
    assert run_cli(capsys, "evaluate", run, data)[0] == 0


def _follow(capsys, data, run, *args):
    return _fit(capsys, data, run, "--follow", "--poll-seconds", 0.02, "--idle-timeout", 0.2,
                *args)


def test_follow_mode_refuses_a_changed_earlier_chunk_and_takes_appended_rows(
        data, tmp_path, capsys):
    run = tmp_path / "run"
    code, s, _ = _follow(capsys, data, run, "--model", "logistic")
    assert code == 0 and s["samples"] == 4800
    _append(data, tmp_path, 4800, 4900)  # grows the partly filled last chunk: no change
    code, s, err = _follow(capsys, data, run, "--resume")
    assert code == 0 and s["samples"] == 4900, err
    _scale(data, 1200, 1300)
    _append(data, tmp_path, 4900, 5000)
    before = _digest(run / "checkpoint.npz")
    code, _, err = _follow(capsys, data, run, "--resume")
    assert code == 2 and _refused(err, 2)
    assert _digest(run / "checkpoint.npz") == before


def test_a_digest_covers_bytes_and_dtype():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    h = chunk_digest(a)
    assert h == chunk_digest(a.copy()) and h != 0
    assert chunk_digest(a.view(np.int32)) != h  # same bytes, another type
    assert chunk_digest(a.astype(">f4")) != h  # another byte order
    b = a.copy()
    b[3, 2] = np.nextafter(b[3, 2], np.inf)
    assert chunk_digest(b) != h
    odd = np.arange(7, dtype=np.uint8)  # a tail shorter than a 64-bit word
    assert chunk_digest(odd[1:]) != chunk_digest(odd[:-1])
    assert chunk_digest(odd[:6]) != chunk_digest(np.append(odd[:6], np.uint8(0)))
    rows = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    assert chunk_digest(rows[[1, 0, *range(2, 64)]]) != chunk_digest(rows)  # rows swapped
    assert chunk_digest(rows[1:]) == chunk_digest(rows[1:].copy())  # 4-byte aligned start


def test_the_digest_map_round_trips_through_a_checkpoint(tmp_path):
    d = ChunkDigests()
    d.bind(R, "X")
    block = np.ones((R, 3), np.float32)
    d.check(4, 4 * R, [(0, "X", block), (1, "y", np.zeros(R))])
    d.check(7, 7 * R, [(0, "X", block[:120]), (1, "y", np.zeros(120))])
    save_checkpoint(tmp_path / "c.npz", {"digests": d.to_dict()})
    back = ChunkDigests.from_dict(load_checkpoint(tmp_path / "c.npz")["digests"])
    assert len(back) == 2 and back.recorded(4) and not back.recorded(5)
    assert back.unverified(4) and not d.unverified(4)  # loaded: not compared yet
    assert back.to_dict()["digest"].dtype == np.uint64
    back.check(7, 7 * R, [(0, "X", block[:200]), (1, "y", np.zeros(200))])  # grown
    assert not back.unverified(7) and back.to_dict()["rows"][7] == 200
    with pytest.raises(DataError, match=r"chunk 4: rows 2000:2500 changed"):
        back.check(4, 4 * R, [(0, "X", block), (1, "y", np.ones(R))])
    with pytest.raises(DataError, match="now ends at row 3510"):
        back.check(7, 7 * R, [(0, "X", block[:10]), (1, "y", np.zeros(10))])
    with pytest.raises(DataError, match="chunks of 250 rows"):
        back.bind(250, "X")
    json.dumps(d.to_dict()["chunk_rows"])
    copied = pickle.loads(pickle.dumps(back))  # a fitted estimator pickles its learner
    assert copied.recorded(7) and copy.deepcopy(copied).recorded(4)


def _edit_metadata(data, name, change):
    path = data / name / "zarr.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _big_endian(meta):
    for codec in meta["codecs"]:
        if codec["name"] == "bytes":
            codec["configuration"] = {"endian": "big"}


def _transpose(meta):
    meta["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [1, 0]}})


@pytest.mark.parametrize("name, change, expected", [
    ("y", _big_endian, "array 'y' has other codecs: bytes(endian=little) > "),
    ("X", _transpose, "array 'X' has other codecs: bytes(endian=little)"),
    ("X", lambda m: m.update(data_type="int32"), "other dtype: float32 then, int32 now"),
])
def test_resume_names_a_metadata_change_of_the_same_byte_size(tmp_path, capsys, name, change,
                                                               expected):
    """Finding 9: valid metadata of the same byte size (another dtype, byte order or codec
    chain) is refused on resume naming what changed (before: "other metadata").
    """
    data = tmp_path / "d.zarr"
    make_dataset(data, task="linear", rows=2000, features=3, chunk_rows=R, seed=2)
    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "linear", "--epochs", 1,
                "--max-samples", 1000)[0] == 0
    _edit_metadata(data, name, change)
    code, _, err = _fit(capsys, data, run, "--resume")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_lbfgs_window_rounds_compare_the_chunks_earlier_rounds_learned(data, tmp_path,
                                                                       capsys):
    """A resumed window round may never draw again a chunk an earlier round learned: the
    recorded chunks are compared before the rounds go on.
    """
    from natgrad_stream.optim.lbfgs import window_chunks

    run = tmp_path / "run"
    assert _fit(capsys, data, run, "--model", "logistic", "--optimizer", "lbfgs",
                "--window", 2, "--lbfgs-rounds", 2)[0] == 0
    next_window = set(window_chunks(10, 2, 0, 2).tolist())
    c = int(next(c for c in _recorded(run) if c not in next_window and c > 0))
    _scale(data, c * R, c * R + 50)
    code, _, err = _fit(capsys, data, run, "--resume", "--lbfgs-rounds", 3)
    assert code == 2 and _refused(err, c)
