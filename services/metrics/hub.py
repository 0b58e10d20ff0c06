"""The metrics hub: one small Serve deployment that every edge replica ships its request records to
and every engine replica ships its vLLM metric snapshot to. A scrape of /metrics on any edge
replica renders the hub's registry, so it always shows the whole application, never
one replica's partial view.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from services.core.serve_status import DeploymentState, read_deployment_states
from services.core.timing import REPLICA_STATES_MAX_AGE_S, SNAPSHOT_STALE_S
from services.metrics.definitions import EdgeMetrics
from services.metrics.engine_series import KV_USAGE_NAMES, RUNNING, WAITING, EngineSnapshot, join_series
from services.metrics.records import (
    CompletionRecord,
    DecisionTimeRecord,
    HTTPRecord,
    PlacedRecord,
    Record,
    RejectionRecord,
    RoutingRecord,
    request_labels,
)


def by_model_name(snapshots: list[EngineSnapshot]) -> dict[str, list[EngineSnapshot]]:
    by_model: dict[str, list[EngineSnapshot]] = defaultdict(list)
    for snapshot in snapshots:
        by_model[snapshot.model_name].append(snapshot)
    return by_model


class _EngineCollector:
    """NIM's gauges summed per model over the engine snapshots, and the replicas' states. (vLLM's own
    series come rendered by each replica: `MetricsHub.exposition` appends them.)"""

    def __init__(self, hub: MetricsHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        snapshots = self.hub.live_snapshots()
        by_model = by_model_name(snapshots)
        gauges: dict[str, tuple[str, Callable[[EngineSnapshot], float]]] = {
            "num_requests_running": ("Requests running in the engines", lambda s: s.gauge(RUNNING)),
            "num_requests_waiting": ("Requests waiting in the engines", lambda s: s.gauge(WAITING)),
            "num_request_max": ("Most requests the engines run at once", lambda s: float(s.max_num_seqs)),
        }
        for name, (help_text, read) in gauges.items():
            gauge = GaugeMetricFamily(name, help_text, labels=["model_name"])
            for model in self.hub.model_names:
                gauge.add_metric([model], sum(read(s) for s in by_model.get(model, [])))
            yield gauge
        kv = GaugeMetricFamily(
            "gpu_cache_usage_perc", "KV-cache usage, 0..1, mean over replicas", labels=["model_name"]
        )
        for model in self.hub.model_names:
            model_replicas = by_model.get(model, [])
            kv.add_metric(
                [model],
                sum(s.gauge(*KV_USAGE_NAMES) for s in model_replicas) / len(model_replicas) if model_replicas else 0,
            )
        yield kv
        profiles = GaugeMetricFamily(
            "slmserve_engine_profile",
            "Engine replicas by the profile they run (services/engine/profiles.py)",
            labels=["model_name", "profile", "precision", "tensor_parallel_size"],
        )
        counted: dict[tuple[str, ...], int] = defaultdict(int)
        for snapshot in snapshots:
            info = snapshot.profile
            if info:
                counted[
                    (snapshot.model_name, str(info["name"]), str(info["precision"]), str(info["tensor_parallel_size"]))
                ] += 1
        for labels, replicas_running in sorted(counted.items()):
            profiles.add_metric(list(labels), replicas_running)
        yield profiles
        asleep = GaugeMetricFamily(
            "slmserve_engine_replicas_asleep",
            "Engine replicas asleep (vLLM's sleep mode, the catalog's idle.sleep_after_s): GPU memory freed",
            labels=["model_name"],
        )
        for model in self.hub.model_names:
            asleep.add_metric([model], sum(1 for s in by_model.get(model, []) if s.asleep))
        yield asleep
        replicas = GaugeMetricFamily(
            "slmserve_model_replicas", "Engine replicas by state", labels=["model_name", "state"]
        )
        ready = GaugeMetricFamily(
            "slmserve_model_ready", "1 when the model has a running replica", labels=["model_name"]
        )
        target = GaugeMetricFamily(
            "slmserve_model_target_replicas",
            "Engine replicas the autoscaler (or num_replicas) asks for",
            labels=["model_name"],
        )
        for model, deployment in self.hub.deployments.items():
            state = self.hub.replica_states.get(deployment, DeploymentState())
            for replica_state, count in sorted(state.replicas.items()):
                replicas.add_metric([model, replica_state], count)
            ready.add_metric([model], 1.0 if state.running_replicas > 0 else 0.0)
            if state.target_replicas is not None:
                target.add_metric([model], state.target_replicas)
        yield replicas
        yield ready
        yield target


@dataclass(frozen=True, slots=True)
class Scrape:
    """What a scrape gets from the hub: its own registry's text, and every live replica's vLLM series
    unless the scraping replica already holds the current ones (`series` None)."""

    registry: bytes
    series_version: str
    series: bytes | None


class MetricsHub:
    def __init__(self, engines: dict[str, tuple[str, str]], tenants: list[str] | None = None) -> None:
        self.apps = {app for app, _ in engines.values()}
        self.deployments = {
            model: deployment for model, (_, deployment) in engines.items()
        }  # model -> engine deployment
        self.model_names = list(self.deployments)
        self.model_of = {deployment: model for model, deployment in self.deployments.items()}
        self.snapshots: dict[str, EngineSnapshot] = {}
        # The joined vLLM series change at most once per ENGINE_SERIES_PERIOD_S and replica, and they are
        # most of a scrape's text: a scraper holds them by version (unique to this hub's life).
        self._series_epoch = uuid.uuid4().hex
        self._series_changes = 0
        self._joined: bytes | None = None
        self.replica_states: dict[str, DeploymentState] = {}
        self._states_read_at = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.edge = EdgeMetrics(self.registry)
        self.edge.initialize(self.model_names, tenants or [])
        self.registry.register(_EngineCollector(self))

    # The methods Serve calls are async: Serve runs a plain method on a worker thread, a hop that cost
    # more than the method's work, once a second per engine replica (loadtests/scale.py).
    async def record(self, batch: list[Record]) -> None:
        edge = self.edge
        for record in batch:
            if isinstance(record, HTTPRecord):
                edge.http_requests.labels(record.route, str(record.status_code)).inc()
            elif isinstance(record, RejectionRecord):
                edge.rejected.labels(*request_labels(record), record.reason).inc()
                if record.tenant and record.model_name:
                    edge.tenant_requests.labels(record.tenant, record.model_name, "rejected").inc()
            elif isinstance(record, CompletionRecord):
                self._record_completion(record)
            elif isinstance(record, PlacedRecord):
                edge.placed.labels(record.model_name).inc()
            elif isinstance(record, RoutingRecord):
                model = self.model_of.get(record.deployment, record.deployment)
                edge.routing.labels(model, record.policy, record.reason).inc(record.count)
            elif isinstance(record, DecisionTimeRecord):
                timed = edge.decision_time.labels(self.model_of.get(record.deployment, record.deployment))
                for seconds in record.seconds:
                    timed.observe(seconds)

    def _record_completion(self, record: CompletionRecord) -> None:
        edge, model = self.edge, request_labels(record)
        if record.tenant:  # metered whatever the outcome: what the engine reported is what it did
            tenant = (record.tenant, record.model_name)
            edge.tenant_requests.labels(*tenant, "success" if record.success else "failure").inc()
            edge.tenant_prompt_tokens.labels(*tenant).inc(record.prompt_tokens)
            edge.tenant_generation_tokens.labels(*tenant).inc(record.generation_tokens)
            if record.queued_s is not None:
                edge.tenant_queue.labels(record.tenant, record.model_name, record.service_class).observe(
                    record.queued_s
                )
        (edge.success if record.success else edge.failure).labels(*model).inc()
        if record.held_s is not None:
            edge.held.labels(*model).observe(record.held_s)
        if record.finish_reason:
            edge.finish.labels(*model, record.finish_reason).inc()
        if not record.success:
            return
        edge.prompt_tokens.labels(*model).inc(record.prompt_tokens)
        edge.generation_tokens.labels(*model).inc(record.generation_tokens)
        edge.request_prompt_tokens.labels(*model).observe(record.prompt_tokens)
        edge.request_generation_tokens.labels(*model).observe(record.generation_tokens)
        if record.ttft_s is not None:
            edge.ttft.labels(*model).observe(record.ttft_s)
        if record.e2e_s is not None:
            edge.e2e.labels(*model).observe(record.e2e_s)
            if record.ttft_s is not None and record.generation_tokens > 1:
                edge.tpot.labels(*model).observe((record.e2e_s - record.ttft_s) / (record.generation_tokens - 1))
        if record.vision_s is not None:
            edge.vision_encoder.labels(*model).observe(record.vision_s)
        for phase, seconds in (("ingress", record.ingress_s), ("edge", record.edge_s), ("relay", record.relay_s)):
            if seconds is not None:
                edge.overhead.labels(record.model_name, phase).observe(seconds)

    async def update_engine(self, snapshot: EngineSnapshot) -> bool:
        """Takes a replica's snapshot; False when it came without series (unchanged) and the hub has
        none of that replica's (it restarted since): the replica then sends them whole."""
        previous = self.snapshots.get(snapshot.replica_id)
        if snapshot.series is None:
            snapshot.series = previous.series if previous is not None else None
        else:
            self._series_changed()
        self.snapshots[snapshot.replica_id] = snapshot
        for seconds in snapshot.wake_seconds:
            self.edge.wake.labels(snapshot.model_name).observe(seconds)
        return snapshot.series is not None

    def live_snapshots(self) -> list[EngineSnapshot]:
        now = time.monotonic()
        for replica_id in [r for r, s in self.snapshots.items() if now - s.received_at > SNAPSHOT_STALE_S]:
            del self.snapshots[replica_id]
            self._series_changed()
        return list(self.snapshots.values())

    def sleeping_models(self) -> list[str]:
        """Models whose every live engine replica is asleep: their next request pays a wake."""
        by_model = by_model_name(self.live_snapshots())
        return sorted(model for model, replicas in by_model.items() if all(s.asleep for s in replicas))

    def _series_changed(self) -> None:
        self._series_changes += 1
        self._joined = None

    @property
    def series_version(self) -> str:
        return f"{self._series_epoch}-{self._series_changes}"

    async def render(self, batch: list[Record] | None = None, held_series: str | None = None) -> Scrape:
        """A scrape, after the scraping replica's unshipped records (`batch`) are counted; the vLLM
        series only when they are not the version the scraper holds (`held_series`)."""
        if batch:
            await self.record(batch)
        if time.monotonic() - self._states_read_at > REPLICA_STATES_MAX_AGE_S:
            try:
                self.replica_states = await asyncio.to_thread(read_deployment_states, self.apps, with_targets=True)
                self._states_read_at = time.monotonic()
            except Exception:  # keep the last known states if the controller is busy
                pass
        registry, series = generate_latest(self.registry), self.joined_series()
        version = self.series_version  # after the join, which drops stale snapshots first
        return Scrape(registry, version, None if held_series == version else series)

    def joined_series(self) -> bytes:
        self.live_snapshots()  # drops stale snapshots (a new version) before the join is reused
        if self._joined is None:
            self._joined = join_series(self.snapshots.values())
        return self._joined

    def exposition(self) -> bytes:
        """The hub's own registry, then every live replica's vLLM series."""
        return generate_latest(self.registry) + self.joined_series()


class HubScraper:
    """A scraping replica's side of `MetricsHub.render`: it keeps the vLLM series it was last sent and
    asks for them again only when the hub's version moved (several scrapes a second would otherwise
    carry the same series, most of the text, through Ray each time)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub  # a handle to the MetricsHub deployment
        self._series_version: str | None = None
        self._series = b""

    async def text(self, batch: list[Record]) -> bytes:
        scrape: Scrape = await self.hub.render.remote(batch, self._series_version)
        if scrape.series is not None:
            self._series_version, self._series = scrape.series_version, scrape.series
        return scrape.registry + self._series
