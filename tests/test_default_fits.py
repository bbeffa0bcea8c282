"""With no options beyond the model, ``fit`` reaches the optimum of every model family's
objective, against an independent optimizer (SciPy's L-BFGS-B on the whole in-memory data,
with the model's gradient), and says so (``converged``, ``train_loss`` of the returned θ).

GLMs and the Gaussians: Fisher scoring after the first pass (``tests/test_convergence.py``);
ICA, the Ising model (MPF objective) and the network: an L-BFGS hand-over in the natural
space (``refine="lbfgs"``, the models' own default).
"""

import numpy as np
import pytest
import scipy.optimize

from natgrad_stream.data.datasets import make_dataset
from natgrad_stream.learner import NaturalGradientLearner
from natgrad_stream.models import make_model


def _scipy_optimum(model, X, theta0):
    """Min J by L-BFGS-B from ``theta0`` on the whole data (tight tolerances)."""
    ws = model.new_workspace("diagonal", n_threads=1)

    def fun(theta):
        loss, wsum = model.accumulate(X, None, None, theta, metric=None,
                                      structure="diagonal", ws=ws)
        return loss / wsum, ws.grad / wsum

    res = scipy.optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": 20_000, "gtol": 1e-11, "ftol": 1e-16})
    return res.fun


@pytest.mark.parametrize("task, features", [("ica", 4), ("ising", 8)])
def test_the_default_fit_reaches_the_optimum_of_unnormalized_objectives(task, features,
                                                                        tmp_path):
    path = tmp_path / f"{task}.zarr"
    make_dataset(path, task=task, rows=20_000, features=features, chunk_rows=2048, seed=2)
    import zarr

    X = np.asarray(zarr.open_group(str(path), mode="r")["X"][:], dtype=np.float64)
    model = make_model(task, features)
    learner = NaturalGradientLearner(model).fit(str(path))
    result = learner.result
    assert result.converged and result.epochs < 50
    assert result.train_loss == pytest.approx(model.loss(X, None, learner.theta), rel=1e-12)
    optimum = _scipy_optimum(model, X, learner.theta)
    assert optimum <= result.train_loss  # SciPy from our point: a true minimum at most
    assert (result.train_loss - optimum) / abs(optimum) < 1e-6
