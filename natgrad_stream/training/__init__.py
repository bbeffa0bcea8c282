"""The training loop: options table (:mod:`.options`), typed learner state (:mod:`.state`),
the learner and its strategies (:mod:`.learner`), callbacks and checkpoints.
"""
