"""Quantiles of a Prometheus histogram over the last seconds, from cumulative snapshots: what an
engine replica tells the autoscaler about the TTFT its users see now (services/engine/autoscaling.py),
from vLLM's own histogram, or from one of the replica's own (`CumulativeHistogram`) when the SLO
follows one service class."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any


def cumulative_buckets(families: list[Any], name: str) -> dict[float, float]:
    """`le` -> cumulative count of histogram `name`, summed over its label sets."""
    buckets: dict[float, float] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                upper = float(sample.labels["le"])
                buckets[upper] = buckets.get(upper, 0.0) + sample.value
    return buckets


# vLLM's buckets for time to first token (seconds), so both sources read alike.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
    math.inf,
)


class CumulativeHistogram:
    """`le` -> cumulative count, as `cumulative_buckets` reads a Prometheus histogram."""

    def __init__(self, bounds: tuple[float, ...] = TTFT_BUCKETS) -> None:
        self.buckets = dict.fromkeys(bounds, 0.0)

    def observe(self, value: float) -> None:
        for bound in self.buckets:
            if value <= bound:
                self.buckets[bound] += 1

    def snapshot(self) -> dict[float, float]:
        return dict(self.buckets)


class RecentQuantile:
    """Keeps cumulative bucket snapshots for `window_s`; quantiles of what was observed in between."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.snapshots: deque[tuple[float, dict[float, float]]] = deque()

    def add(self, buckets: dict[float, float], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.snapshots.append((now, buckets))
        while len(self.snapshots) > 2 and self.snapshots[1][0] <= now - self.window_s:
            self.snapshots.popleft()

    def quantile(self, q: float) -> float:
        """The q-quantile of what was observed in the window (see `histogram_quantile`); 0 when
        nothing was observed."""
        if len(self.snapshots) < 2:
            return 0.0
        (_, first), (_, last) = self.snapshots[0], self.snapshots[-1]
        value = histogram_quantile(increase(first, last), q)
        return 0.0 if value is None else value


def increase(earlier: dict[float, float], later: dict[float, float]) -> dict[float, float]:
    """`le` -> cumulative count observed between two snapshots of one histogram."""
    return {bound: count - earlier.get(bound, 0.0) for bound, count in later.items()}


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus's histogram_quantile over `le` -> cumulative counts: interpolated within the bucket
    that holds the rank (the highest finite bound when it falls in +Inf); None when nothing was observed."""
    bounds = sorted(buckets)
    counts = [buckets[bound] for bound in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if not math.isfinite(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower
