"""kill -9 at random moments, then ``fit --resume``: bit-identical parameters (the short
version of ``scripts/kill_resume.py``, which runs 20 trials per optimizer).
"""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def kill_resume(load_script):
    return load_script("kill_resume")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("kill")


@pytest.mark.parametrize("name", ["sgd", "adam", "lbfgs", "handover"])
def test_killed_and_resumed_runs_equal_the_uninterrupted_one(name, kill_resume, root):
    data = kill_resume.make_data(root)["logistic"]
    ref, seconds = kill_resume.reference(name, data, root)
    theta, kills = kill_resume.trial(name, data, root, seconds, np.random.default_rng(7),
                                     at_checkpoints=2)
    assert kills == 2
    assert theta.tobytes() == ref.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lbfgs", "handover"])
def test_runs_stopped_by_sigint_and_resumed_equal_the_uninterrupted_one(name, kill_resume,
                                                                       root, monkeypatch):
    """SIGINT right after a checkpoint: the fit stops gracefully (exit 130) inside the next
    L-BFGS round (or streaming pass), writes a checkpoint, and ``fit --resume`` ends
    bit-identical to the uninterrupted run.
    """
    import signal

    monkeypatch.setitem(kill_resume.SIGNAL, "number", signal.SIGINT)
    monkeypatch.setattr(kill_resume, "BAD_EXITS", {})
    data = kill_resume.make_data(root)["logistic"]
    ref, seconds = kill_resume.reference(name, data, root)
    theta, kills = kill_resume.trial(name, data, root, seconds, np.random.default_rng(9),
                                     at_checkpoints=2)
    assert kills == 2 and not kill_resume.BAD_EXITS
    assert theta.tobytes() == ref.tobytes()


def test_a_run_whose_read_budget_binds_resumes_exactly(kill_resume, root):
    """``--read-buffer-bytes 500K`` reads one 2,048-row chunk at a time instead of 2 (the
    order changes, deterministically); kills mid-epoch still resume bit for bit.
    """
    from natgrad_stream.data import open_zarr

    data = kill_resume.make_data(root)["logistic"]
    plan = open_zarr(data).read_plan(read_buffer_bytes=500 << 10)
    assert plan.chunks_per_read == 1 and not plan.over_budget
    ref, seconds = kill_resume.reference("sgd-budget", data, root)
    theta, kills = kill_resume.trial("sgd-budget", data, root, seconds,
                                     np.random.default_rng(8), at_checkpoints=2)
    assert kills == 2
    assert theta.tobytes() == ref.tobytes()
    assert theta.tobytes() != kill_resume.reference("sgd", data, root)[0].tobytes()


def test_a_checkpoint_written_inside_an_lbfgs_round_resumes_exactly(tmp_path):
    """Checkpoints due by samples fall inside the L-BFGS rounds of a hand-over
    (``refine="lbfgs"``): they hold the round's start, the exact restart point, so a run
    killed after one equals the uninterrupted run bit for bit.
    """
    from natgrad_stream.data.datasets import make_dataset
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model
    from natgrad_stream.training.events import Callback

    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=8000, features=5, chunk_rows=1024, seed=3)

    def learner():
        return NaturalGradientLearner(make_model("logistic", 5), refine="lbfgs")

    whole = learner().fit(str(path), epochs=12)

    class Killed(Exception):
        pass

    class SaveThenDie(Callback):
        def __init__(self):
            self.evaluations = 0

        def on_batch_end(self, lr, info, cursor):
            if info.full_pass:
                self.evaluations += 1
                if self.evaluations == 3:  # mid-round: a checkpoint, then kill -9
                    self.saved = lr.state_dict()
                    raise Killed

    die = SaveThenDie()
    with pytest.raises(Killed):
        learner().fit(str(path), epochs=12, callbacks=[die])
    resumed = NaturalGradientLearner.from_state_dict(die.saved).fit(str(path), epochs=12)
    assert whole.result.converged and resumed.result.converged
    assert resumed.theta.tobytes() == whole.theta.tobytes()
    assert resumed.samples == whole.samples


@pytest.mark.parametrize("optimizer", ["lbfgs", "handover"])
def test_a_stop_requested_inside_an_lbfgs_round_resumes_exactly(optimizer, tmp_path):
    """SIGINT asks the learner to stop before its next L-BFGS evaluation: the round is cut
    short. The checkpoint written then holds the round's start (the state a kill would
    resume from), so the resumed run equals the uninterrupted one bit for bit; what the
    cut round found is still what the run reports until a resume goes past it.
    """
    from natgrad_stream.app.runs import reported_theta
    from natgrad_stream.data.datasets import make_dataset
    from natgrad_stream.learner import NaturalGradientLearner
    from natgrad_stream.models import make_model
    from natgrad_stream.training.events import Callback
    from natgrad_stream.training.learner import make_learner

    path = tmp_path / "d.zarr"
    make_dataset(path, task="logistic", rows=8000, features=5, chunk_rows=1024, seed=3)
    kw = ({"optimizer": "lbfgs", "lbfgs_rounds": 3, "lbfgs_iters": 6} if optimizer == "lbfgs"
          else {"refine": "lbfgs"})
    extent = {} if optimizer == "lbfgs" else {"epochs": 12}

    def learner():
        return make_learner(make_model("logistic", 5), **kw)

    whole = learner().fit(str(path), **extent)

    class StopMidRound(Callback):  # what the CLI's SIGINT handler does, at a known moment
        evaluations = 0
        rounds = []

        def on_batch_end(self, lr, info, cursor):
            if info.full_pass:
                self.evaluations += 1
                if self.evaluations == 4:
                    lr.request_stop()

        def on_round(self, lr, record):
            self.rounds.append(record)

    stop = StopMidRound()
    stopped = learner().fit(str(path), callbacks=[stop], **extent)
    assert stopped.result.interrupted
    last = stop.rounds[-1]
    assert not last["complete"]  # the stop fell inside a round
    saved = stopped.state_dict()
    # the parameters reported are the best point the cut round evaluated
    assert reported_theta(saved).tobytes() == stopped.theta.tobytes()
    assert stopped.result.train_loss == last["loss"]
    resumed = NaturalGradientLearner.from_state_dict(saved).fit(str(path), **extent)
    assert resumed.theta.tobytes() == whole.theta.tobytes()
    assert resumed.samples == whole.samples
    # a stopped learner continued in memory does the same as a resume
    again = stopped.fit(str(path), **extent)
    assert again.theta.tobytes() == whole.theta.tobytes()
