"""Latency statistics: numpy percentiles (its default linear interpolation) and one summary shape for every tool."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """q-th percentile (0..100) of the values, linear interpolation; None when there are none."""
    return float(np.percentile(values, q)) if len(values) else None


def summarize(values: Iterable[Optional[float]], percentiles: Sequence[int] = PERCENTILES) -> dict:
    """{count, mean, std, min, max, p50, p90, ...}; None and NaN values are skipped; every statistic None when
    empty. std is the population standard deviation (ddof=0)."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    out: dict = {"count": int(vals.size)}
    if vals.size:
        out.update(mean=float(vals.mean()), std=float(vals.std()), min=float(vals.min()), max=float(vals.max()))
        out.update({f"p{q}": float(v) for q, v in zip(percentiles, np.percentile(vals, percentiles))})
    else:
        out.update(mean=None, std=None, min=None, max=None)
        out.update({f"p{q}": None for q in percentiles})
    return out
