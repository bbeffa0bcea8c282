"""Compatibility alias: L-BFGS in φ is the ``optimizer="lbfgs"`` strategy of the learner
(:mod:`natgrad_stream.training.learner`); its algorithm is in :mod:`natgrad_stream.optim.lbfgs`.
"""

from natgrad_stream.optim.lbfgs import window_chunks
from natgrad_stream.training.events import LBFGSResult
from natgrad_stream.training.learner import NaturalLBFGS

__all__ = ["LBFGSResult", "NaturalLBFGS", "window_chunks"]
