"""Compatibility alias: evaluation lives in :mod:`natgrad_stream.app.evaluate`."""

from natgrad_stream.app.evaluate import evaluate

__all__ = ["evaluate"]
