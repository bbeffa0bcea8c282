"""Compatibility alias: callbacks live in :mod:`natgrad_stream.training.callbacks`."""

from natgrad_stream.training.callbacks import CheckpointEvery, MetricsLogger, ProgressBar
from natgrad_stream.training.events import Callback

__all__ = ["Callback", "CheckpointEvery", "MetricsLogger", "ProgressBar"]
