"""Model families: parameter layouts and fused Numba kernels.

Use :func:`make_model` to build one by registry name.
"""

from __future__ import annotations

from natgrad_stream.models.base import METRICS, STRUCTURES, Model, Workspace
from natgrad_stream.models.gaussian_mean import PAPER_MIXING, GaussianMean
from natgrad_stream.models.glm import LinearRegression, LogisticRegression

#: Registry of model names (as used by the command line) to classes.
MODELS: dict[str, type[Model]] = {
    cls.name: cls for cls in (LogisticRegression, LinearRegression, GaussianMean)
}


def make_model(name: str, n_features: int, **options) -> Model:
    """Build the model registered as ``name`` for data with ``n_features`` columns."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return cls(n_features, **options)


def model_from_config(config: dict) -> Model:
    """Rebuild a model from :meth:`Model.config`."""
    cfg = dict(config)
    return make_model(cfg.pop("name"), cfg.pop("n_features"), **cfg)


__all__ = [
    "METRICS", "MODELS", "PAPER_MIXING", "STRUCTURES", "GaussianMean", "LinearRegression",
    "LogisticRegression", "Model", "Workspace", "make_model", "model_from_config",
]
