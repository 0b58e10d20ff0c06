"""The platform's own time per request (`slmserve_platform_overhead_seconds`, by phase) over one
stretch of a benchmark: read the histograms before and after, and summarise the difference."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.core.timing import RECORDS_FLUSH_PERIOD_S
from services.metrics.definitions import OVERHEAD_PHASES
from services.metrics.recent import histogram_quantile
from testkit.exposition import Exposition

FAMILY = "slmserve_platform_overhead_seconds"


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)
    total: float
    count: float


def read(metrics_url: str, model: str, api_key: str = "") -> dict[str, Histogram]:
    """Each phase's histogram for `model`, once the edge replicas have shipped their records."""
    time.sleep(3 * RECORDS_FLUSH_PERIOD_S)
    metrics = Exposition.fetch(metrics_url, api_key, timeout_s=10)

    def phase_of(phase: str) -> Histogram:
        labels = {"model_name": model, "phase": phase}
        buckets = metrics.by("le", f"{FAMILY}_bucket", **labels)
        return Histogram(
            tuple(sorted((float(le), count) for le, count in buckets.items())),
            metrics.total(f"{FAMILY}_sum", **labels),
            metrics.total(f"{FAMILY}_count", **labels),
        )

    return {phase: phase_of(phase) for phase in OVERHEAD_PHASES}


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    value = histogram_quantile(dict(buckets), q)
    return float("nan") if value is None else value


def summary(before: dict[str, Histogram], after: dict[str, Histogram]) -> dict[str, dict[str, float]]:
    """Per phase over the stretch: requests, mean, p50 and p95 in milliseconds."""
    result = {}
    for phase, later in after.items():
        earlier = before.get(phase, Histogram((), 0.0, 0.0))
        counts = dict(earlier.buckets)
        buckets = [(bound, cumulative - counts.get(bound, 0.0)) for bound, cumulative in later.buckets]
        count = later.count - earlier.count
        result[phase] = {
            "requests": count,
            "mean_ms": 1000 * (later.total - earlier.total) / count if count else float("nan"),
            "p50_ms": 1000 * _quantile(buckets, 0.5),
            "p95_ms": 1000 * _quantile(buckets, 0.95),
        }
    return result


def line(phases: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{phase} mean {s['mean_ms']:.2f} p50 {s['p50_ms']:.2f} p95 {s['p95_ms']:.2f} ms" for phase, s in phases.items()
    )


def table(by_level: dict[int, list[dict[str, dict[str, float]]]]) -> str:
    """A markdown table: per level, each phase's p50 / p95 ms, the mean over the level's rounds."""
    header = "| c | " + " | ".join(f"{phase} p50 / p95 (ms)" for phase in OVERHEAD_PHASES) + " |"
    lines = [header, "|---|" + "---|" * len(OVERHEAD_PHASES)]
    for level, rounds in sorted(by_level.items()):
        cells = []
        for phase in OVERHEAD_PHASES:
            p50s = [r[phase]["p50_ms"] for r in rounds if r[phase]["requests"]]
            p95s = [r[phase]["p95_ms"] for r in rounds if r[phase]["requests"]]
            cells.append(f"{sum(p50s) / len(p50s):.2f} / {sum(p95s) / len(p95s):.2f}" if p50s else "-")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
