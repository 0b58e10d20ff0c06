"""What an engine replica ships to the metrics hub every second: the few gauges the hub sums per
model, and every ENGINE_SERIES_PERIOD_S its vLLM series already rendered as Prometheus text (with a
`replica` label). Each replica
renders its own series so that a scrape of the hub joins text instead of formatting every replica's
samples again: the hub's scrape then costs about the same at 64 replicas as at one (docs/scale.md).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

logger = logging.getLogger("slmserve.metrics")

KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # 0.32 / older name
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
TTFT = "vllm:time_to_first_token_seconds"
GAUGES = (RUNNING, WAITING, *KV_USAGE_NAMES)  # what the hub sums per model and the router reads
# What a replica reads of vLLM's registry for every snapshot, by sample name (a restricted collect).
SNAPSHOT_SAMPLES = (*GAUGES, f"{TTFT}_bucket")


@dataclass(frozen=True, slots=True)
class SeriesText:
    """One vLLM metric family of one replica in the text exposition format."""

    name: str
    header: str  # its `# HELP` and `# TYPE` lines, written once per family however many replicas
    samples: str  # its sample lines, each ending in a newline


@dataclass
class EngineSnapshot:
    replica_id: str
    model_name: str
    max_num_seqs: int
    series: list[SeriesText] | None = None  # None: the same as in this replica's last snapshot
    gauges: dict[str, float] = field(default_factory=dict)  # the vLLM gauges the hub sums (see gauges_of)
    profile: dict[str, Any] = field(default_factory=dict)  # EngineDeployment.profile_info()
    asleep: bool | None = None  # None: the engine does not sleep when idle (services/engine/idle_sleep.py)
    wake_seconds: list[float] = field(default_factory=list)  # its wakes since the last snapshot
    received_at: float = field(default_factory=time.monotonic)

    def gauge(self, *names: str) -> float:
        return sum(self.gauges.get(name, 0.0) for name in names)


def vllm_families(samples: Iterable[str] | None = None, registry: CollectorRegistry = REGISTRY) -> list[Metric]:
    """vLLM's metric families in `registry` (this process's), or only the given samples of them
    (cheaper: only their collectors run)."""
    source = registry if samples is None else registry.restricted_registry(samples)
    return [family for family in source.collect() if family.name.startswith("vllm:")]


def gauges_of(families: Iterable[Metric]) -> dict[str, float]:
    """The gauges the hub aggregates per model and the router reads, summed over label sets."""
    return {family.name: sum(sample.value for sample in family.samples) for family in families if family.name in GAUGES}


_FAMILY_START = re.compile(r"^(?=# HELP )", re.MULTILINE)


class Families:
    """A collector over given families (what `generate_latest` walks)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render_series(families: Iterable[Metric], replica_id: str) -> list[SeriesText]:
    """The families as text, their samples labelled with the replica that keeps replicas' series apart.
    One family may render as several (a counter's `_total` and `_created`), each with its own header."""
    labelled = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            copy.add_sample(sample.name, {**sample.labels, "replica": replica_id}, sample.value)
        labelled.append(copy)
    text = generate_latest(Families(labelled)).decode()
    rendered = []
    for block in _FAMILY_START.split(text)[1:]:
        help_line, type_line, samples = block.split("\n", 2)
        rendered.append(SeriesText(help_line.split(" ", 3)[2], f"{help_line}\n{type_line}\n", samples))
    return rendered


class SeriesShipper:
    """One replica's series as it ships them: rendered only when a sample changed since the last
    shipment (an idle engine's never do, so an idle replica renders and sends nothing but gauges)."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self._shipped: tuple[Any, ...] | None = None

    def series(self, families: list[Metric]) -> list[SeriesText] | None:
        """The series to send, or None when the hub has them already."""
        now = tuple((sample.name, tuple(sample.labels.items()), sample.value) for f in families for sample in f.samples)
        if now == self._shipped:
            return None
        self._shipped = now
        return render_series(families, self.replica_id)

    @property
    def needs_all(self) -> bool:
        """Nothing shipped yet, or the hub lost what was: the next snapshot should carry the series."""
        return self._shipped is None

    def lost(self) -> None:
        """The hub does not hold them (it restarted): send them whole next time."""
        self._shipped = None

    async def ship(self, hub: Any, snapshot: EngineSnapshot) -> None:
        """The snapshot to the hub (a handle to services/metrics/hub.py's MetricsHub)."""
        try:
            if not await hub.update_engine.remote(snapshot):
                self.lost()
        except Exception:
            self.lost()
            logger.warning("metrics hub unreachable", exc_info=True)


def join_series(snapshots: Iterable[EngineSnapshot]) -> bytes:
    """Every replica's series, one header per family and its replicas' samples beneath it (the text
    format wants a family's lines together)."""
    headers: dict[str, str] = {}
    samples: dict[str, list[str]] = {}
    for snapshot in snapshots:
        for series in snapshot.series or ():
            headers.setdefault(series.name, series.header)
            samples.setdefault(series.name, []).append(series.samples)
    return "".join(headers[name] + "".join(samples[name]) for name in headers).encode()
