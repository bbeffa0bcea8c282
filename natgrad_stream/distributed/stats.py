"""Mergeable sums of one evaluation: loss, weight, gradient and metric over a set of rows.

Everything a pass or a step needs from the data is a sum over rows, so statistics of
disjoint rows merge by addition. Floating-point addition is not associative, so the order
is fixed: :func:`tree_sum` adds neighbours pairwise, level by level, in a tree whose shape
depends only on the number of leaves — never on which worker computed what, or when.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stats:
    """Sums over a set of rows.

    Attributes
    ----------
    loss : float
        Σ wᵢ ℓᵢ.
    weight : float
        Σ wᵢ.
    grad : ndarray, shape (P,)
        Σ wᵢ ∇θ ℓᵢ.
    metric : ndarray, shape (P, P) or (P,), or None
        Σ of the metric's per-row terms (None when not requested).
    rows : int
    """

    loss: float
    weight: float
    grad: np.ndarray
    metric: np.ndarray | None
    rows: int

    def __add__(self, other: Stats) -> Stats:
        if (self.metric is None) != (other.metric is None):
            raise ValueError("cannot add statistics with and without a metric")
        return Stats(self.loss + other.loss, self.weight + other.weight,
                     self.grad + other.grad,
                     None if self.metric is None else self.metric + other.metric,
                     self.rows + other.rows)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (what moves between processes)."""
        return 8 * 3 + self.grad.nbytes + (0 if self.metric is None else self.metric.nbytes)


def tree_sum(items: list, add=lambda a, b: a + b):
    """``items`` summed pairwise: ``((i0 + i1) + (i2 + i3)) + …`` level by level (an odd
    last item moves up unchanged). The result depends only on the items and their order.
    """
    if not items:
        raise ValueError("nothing to sum")
    level = list(items)
    while len(level) > 1:
        level = [add(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]
