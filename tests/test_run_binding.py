"""A run is bound to its history: each checkpoint records the run's identity and the
digest of the checkpoint it continues from; ``fit --resume``, ``params`` and ``evaluate``
refuse a checkpoint of another run, one whose checksum index is gone, and (without
``--allow-legacy-checkpoint``) one written before checkpoints recorded their run; and they
say in one line which checkpoint they use when it is not the newest. Each test failed on
the code before (the other run's parameters printed, a shifted θ evaluated unverified, a
silent fall-back to an older checkpoint).
"""

import json
import os
import shutil

import numpy as np
import pytest

from natgrad_stream.app.runs import RUN_ID
from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.training.checkpoint import read_checkpoint

from .test_cli import run_cli

COMMANDS = ("params", "evaluate", "resume")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("bind") / "d.zarr"
    make_dataset(path, task="logistic", rows=3000, features=3, chunk_rows=500, seed=4)
    return path


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Two finished runs on the same data: A with two checkpoints (a resumed second
    epoch), B with other options.
    """
    from natgrad_stream.app.cli import main

    root = tmp_path_factory.mktemp("runs")
    for args in (["--out", root / "A", "--epochs", 1], ["--out", root / "A", "--resume",
                                                          "--epochs", 2],
                 ["--out", root / "B", "--epochs", 1, "--lr", 0.5]):
        resume = "--resume" in args
        model = [] if resume else ["--model", "logistic"]
        assert main([str(a) for a in ["fit", data, *model, *args, "--progress", "never"]]) \
            == 0
    return root


@pytest.fixture()
def run_a(runs, tmp_path):
    """A fresh copy of run A (each test damages its own)."""
    shutil.copytree(runs / "A", tmp_path / "A")
    return tmp_path / "A"


def _use(capsys, command, run, data, *extra):
    """``params RUN``, ``evaluate RUN DATA`` or ``fit DATA --out RUN --resume``."""
    if command == "params":
        return run_cli(capsys, "params", run, *extra)
    if command == "evaluate":
        return run_cli(capsys, "evaluate", run, data, *extra)
    return run_cli(capsys, "fit", data, "--out", run, "--resume", "--epochs", 3, *extra)


def _rewrite_meta(path, change):
    """Rewrite a checkpoint with ``change(meta, arrays)`` applied to its ``__meta__``
    document and arrays (as a damaged or forged file would be).
    """
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("__meta__")[()]))
    change(meta, arrays)
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _one_line(err):
    """The one line ``err`` holds (beside a fit's note that the pass cap ended it)."""
    lines = [ln for ln in err.strip().splitlines() if "continue with --resume" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_copied_from_another_run_is_refused(command, runs, run_a, data,
                                                         capsys):
    shutil.copyfile(runs / "B" / "checkpoint.npz", run_a / "checkpoint.npz")
    before = (run_a / "checkpoint.npz").read_bytes()
    code, out, err = _use(capsys, command, run_a, data)
    assert code == 2 and out is None
    line = _one_line(err)
    assert "checkpoint.npz belongs to another run" in line and "run.json" in line
    assert (run_a / "checkpoint.npz").read_bytes() == before  # nothing rewritten


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_without_its_checksum_index_is_not_used(command, run_a, data, capsys):
    """A θ shifted by 0.5 with the checksums deleted is not evaluated as the run's: the
    newest is damaged, the older one is used, and the warning says so.
    """
    def shift_and_unindex(meta, arrays):
        arrays["theta"] = arrays["theta"] + 0.5
        del meta["checksums"]

    _rewrite_meta(run_a / "checkpoint.npz", shift_and_unindex)
    code, out, err = _use(capsys, command, run_a, data)
    assert code == 0, err
    line = _one_line(err)
    assert "using the older checkpoint" in line and "checkpoint.1.npz" in line
    assert "no valid checksum index" in line
    # with no older checkpoint: refused
    for p in run_a.glob("checkpoint.[0-9]*.npz"):
        p.unlink()
    if command == "resume":
        for p in run_a.glob("checkpoint.damaged-*.npz"):  # set aside by the resume above
            p.rename(run_a / "checkpoint.npz")
    code, out, err = _use(capsys, command, run_a, data)
    assert code == 2 and out is None
    assert "no valid checksum index" in _one_line(err)


@pytest.mark.parametrize("how", ["deleted", "directory", "dev-zero", "fifo", "damaged"])
@pytest.mark.parametrize("command", ["params", "evaluate"])
def test_the_checkpoint_used_is_named_when_it_is_not_the_newest(how, command, run_a, data,
                                                                capsys):
    newest = run_a / "checkpoint.npz"
    older = read_checkpoint(run_a / "checkpoint.1.npz").state
    newest.unlink()
    if how == "directory":
        newest.mkdir()
    elif how == "dev-zero":
        newest.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(newest)  # opening it to read would block
    elif how == "damaged":
        newest.write_bytes(b"PK\x03\x04 not a checkpoint")
    code, out, err = _use(capsys, command, run_a, data)
    assert code == 0, err
    line = _one_line(err)
    assert "warning: using the older checkpoint" in line and "checkpoint.1.npz" in line
    assert "checkpoint.npz" in line.split("(", 1)[1]  # and why the newest was not used
    if command == "params":
        from natgrad_stream.models import model_from_config

        want = model_from_config(older["model"]).params_to_dict(older["theta"])
        assert out == json.loads(json.dumps(want))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_legacy_checkpoint_needs_the_flag(command, run_a, data, capsys):
    """A checkpoint as an earlier natgrad_stream wrote it (format 1, no run identity)."""
    def legacy(meta, arrays):
        meta["format_version"] = 1
        meta.pop("predecessor")
        meta["state"]["run"].pop(RUN_ID)

    for p in run_a.glob("checkpoint*.npz"):
        _rewrite_meta(p, legacy)
    record = json.loads((run_a / "run.json").read_text())
    record.pop(RUN_ID)
    (run_a / "run.json").write_text(json.dumps(record))
    code, out, err = _use(capsys, command, run_a, data)
    assert code == 2 and out is None
    assert "--allow-legacy-checkpoint" in _one_line(err)
    code, out, err = _use(capsys, command, run_a, data, "--allow-legacy-checkpoint")
    assert code == 0, err
    if command == "resume":  # the run is now bound: its record and new checkpoint agree
        run_id = json.loads((run_a / "run.json").read_text())[RUN_ID]
        new = read_checkpoint(run_a / "checkpoint.npz")
        assert new.state["run"][RUN_ID] == run_id and not new.legacy
        old = read_checkpoint(run_a / "checkpoint.1.npz", allow_legacy=True)
        assert old.legacy and new.predecessor == old.digest
        assert run_cli(capsys, "params", run_a)[0] == 0


def test_each_checkpoint_names_its_predecessor_and_a_stale_one_is_refused(run_a, data,
                                                                          capsys):
    code, _, err = _use(capsys, "resume", run_a, data, "--keep-checkpoints", 3)
    assert code == 0, err
    c0, c1, c2 = (read_checkpoint(run_a / n) for n in
                  ("checkpoint.2.npz", "checkpoint.1.npz", "checkpoint.npz"))
    assert c0.predecessor is None  # the run's first
    assert c1.predecessor == c0.digest and c2.predecessor == c1.digest
    assert len({c.state["run"][RUN_ID] for c in (c0, c1, c2)}) == 1
    # an earlier checkpoint of the same run put in place of the newest
    shutil.copyfile(run_a / "checkpoint.2.npz", run_a / "checkpoint.npz")
    code, out, err = _use(capsys, "params", run_a, data)
    assert code == 2 and out is None
    line = _one_line(err)
    assert "checkpoint.npz is stale" in line and "checkpoint.1.npz continues from it" in line


def test_a_new_run_records_its_identity_before_its_first_checkpoint(data, tmp_path,
                                                                    capsys, monkeypatch):
    """run.json holds the run id from the start (so that a run killed before its end is
    bound too); a fit that saved nothing leaves no record of an identity behind.
    """
    from natgrad_stream.app.runs import fit_run
    from natgrad_stream.training.learner import NaturalGradientLearner

    seen = {}

    def dies_before_any_checkpoint(self, *args, **kwargs):
        seen.update(json.loads((tmp_path / "r" / "run.json").read_text()))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(NaturalGradientLearner, "fit", dies_before_any_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            fit_run(data, tmp_path / "r", model="logistic")
    assert isinstance(seen[RUN_ID], str) and seen["summary"] is None
    assert not (tmp_path / "r" / "run.json").exists()
    code, _, err = run_cli(capsys, "fit", data, "--out", tmp_path / "r", "--model",
                           "logistic", "--epochs", 1)
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    saved = read_checkpoint(tmp_path / "r" / "checkpoint.npz").state["run"][RUN_ID]
    assert record[RUN_ID] == saved != seen[RUN_ID]


@pytest.mark.parametrize("name", ["metrics.jsonl", "run.json"])
def test_a_fifo_in_the_run_directory_is_refused_without_hanging(name, run_a, data, capsys):
    """Opening a FIFO with no writer (to read) or no reader (to append) would block."""
    (run_a / name).unlink()
    os.mkfifo(run_a / name)
    code, out, err = _use(capsys, "resume", run_a, data)
    if name == "metrics.jsonl":
        assert code == 2 and out is None
        assert "metrics.jsonl: is a FIFO, not a regular file" in _one_line(err)
    else:  # the record is read to check the run's identity: one warning, then replaced
        assert code == 0, err
        assert "cannot read" in _one_line(err) and "is a FIFO" in err
        assert json.loads((run_a / name).read_text())[RUN_ID]
