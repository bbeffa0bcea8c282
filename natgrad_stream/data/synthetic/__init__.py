"""Synthetic data from known true models, one module per task.

A task module defines:

``Y_DTYPE``
    The target array's dtype (``"float32"``, ``"uint8"``, …), or None when the task has
    no targets (unsupervised models read only ``X``).
``true_params(features: int, seed: int) -> dict``
    The true model, JSON-ready (lists and floats); a pure function of its arguments.
``sample_chunk(params: dict, rng: numpy.random.Generator, n: int) -> (X, y | None)``
    ``n`` rows drawn from the true model with ``rng`` only; ``X`` has shape
    ``(n, features)`` and ``y`` shape ``(n,)``.
``extra_arrays(params: dict) -> dict`` (optional)
    Arrays stored beside ``X`` in the group (e.g. a mixing matrix ``A``).

:func:`natgrad_stream.data.datasets.make_dataset` writes chunk ``c`` with the generator
``(seed, array, c)``, so datasets larger than memory are written in constant memory.
"""
