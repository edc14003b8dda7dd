"""Paired bootstrap over per-query score differences: how sure a difference between two systems is.

Used wherever esdistill decides between two systems on a handful of queries without trusting a
difference within the noise: the promotion gate of ``esdistill adapt`` and the retrieval-mode choice
of ``esdistill tune``.

Example:
    >>> p_better, low, high = paired_bootstrap([0.1] * 20)
    >>> p_better, round(low, 3), round(high, 3)
    (1.0, 0.1, 0.1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_bootstrap"]


def paired_bootstrap(deltas: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(p_better, ci_low, ci_high)`` of the mean of per-query ``deltas``: the share of resamples
    (queries drawn with replacement) whose mean is above 0 (ties count half), and the 90% interval.

    An empty list gives ``(0.5, 0.0, 0.0)``: no evidence either way.
    """
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0:
        return 0.5, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    p_better = float((means > 1e-12).mean() + 0.5 * (np.abs(means) <= 1e-12).mean())
    low, high = np.quantile(means, [0.05, 0.95])
    return p_better, float(low), float(high)
