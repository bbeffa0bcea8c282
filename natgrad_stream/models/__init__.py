"""Model families: parameter layouts and fused Numba kernels.

Use :func:`make_model` to build one by registry name. Model classes are imported on first
use, so the command line starts without compiling every family's kernels.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from natgrad_stream.models.base import METRICS, STRUCTURES, Model, Workspace
from natgrad_stream.models.gaussian_mean import PAPER_MIXING, GaussianMean
from natgrad_stream.models.glm import LinearRegression, LogisticRegression, PoissonRegression

#: Registry name → ``module:Class`` (the command line's ``--model`` choices, in this order).
_REGISTRY = {
    "logistic": "natgrad_stream.models.glm:LogisticRegression",
    "linear": "natgrad_stream.models.glm:LinearRegression",
    "poisson": "natgrad_stream.models.glm:PoissonRegression",
    "softmax": "natgrad_stream.models.softmax:SoftmaxRegression",
    "gaussian": "natgrad_stream.models.gaussian:Gaussian",
    "gaussian-mean": "natgrad_stream.models.gaussian_mean:GaussianMean",
    "ising": "natgrad_stream.models.ising:IsingMPF",
    "ica": "natgrad_stream.models.ica:ICA",
    "mlp": "natgrad_stream.models.mlp:MLPRegressor",
}


class _LazyModels(Mapping):
    """Read-only mapping name → model class, importing each class on first access."""

    def __init__(self, registry: dict[str, str]):
        self._registry = registry
        self._loaded: dict[str, type[Model]] = {}

    def __getitem__(self, name: str) -> type[Model]:
        if name not in self._loaded:
            module, cls = self._registry[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module), cls)
        return self._loaded[name]

    def __iter__(self):
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)


#: Registry of model names (as used by the command line) to classes.
MODELS: Mapping[str, type[Model]] = _LazyModels(_REGISTRY)
#: The registered model names.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_model(name: str, n_features: int, **options) -> Model:
    """Build the model registered as ``name`` for data with ``n_features`` columns."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](n_features, **options)


def model_from_config(config: dict) -> Model:
    """Rebuild a model from :meth:`Model.config`."""
    cfg = dict(config)
    name = cfg.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name].from_config(cfg.pop("n_features"), **cfg)


__all__ = [
    "METRICS", "MODELS", "MODEL_NAMES", "PAPER_MIXING", "STRUCTURES", "GaussianMean",
    "LinearRegression", "LogisticRegression", "Model", "PoissonRegression", "Workspace",
    "make_model", "model_from_config",
]
