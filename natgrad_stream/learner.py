"""Compatibility alias: the learner lives in :mod:`natgrad_stream.training.learner`."""

from natgrad_stream.errors import NumericalError
from natgrad_stream.training.events import Callback, FitResult, StepInfo
from natgrad_stream.training.learner import NaturalGradientLearner

__all__ = ["Callback", "FitResult", "NaturalGradientLearner", "NumericalError", "StepInfo"]
