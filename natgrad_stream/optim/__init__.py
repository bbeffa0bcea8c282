"""Update rules in the whitened space φ: streaming rules (:mod:`.rules`: SGD, momentum,
Adam as ``init``/``update``/``transport`` over an explicit state) and the L-BFGS algorithm
of a round (:mod:`.lbfgs`).
"""

from natgrad_stream.optim.rules import OPTIMIZERS, Optimizer, make_optimizer, step_size

__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer", "step_size"]
