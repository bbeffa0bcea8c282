"""Compatibility alias: checkpoints live in :mod:`natgrad_stream.training.checkpoint`."""

from natgrad_stream.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
