"""The metrics hub's registry, rendered without Ray."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families


def test_a_healthy_hub_shows_zero_failures_and_rejections():
    """Issue 19: a system that never failed shows 0, not "No data", on the failure and rejection
    panels. The hub is built directly (no Ray needed to render its registry)."""
    from prometheus_client import generate_latest

    from services.metrics.definitions import EXPECTED_REJECTIONS
    from services.metrics.hub import MetricsHub

    text = generate_latest(MetricsHub({"m1": ("app", "engine-m1"), "m2": ("app", "engine-m2")}).registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for model in ("m1", "m2"):
        labels = (("base_model", model), ("model_name", model))
        assert samples[("request_failure_total", labels)] == 0
        assert samples[("request_success_total", labels)] == 0
        for reason in EXPECTED_REJECTIONS:
            assert samples[("slmserve_rejected_requests_total", (*labels, ("reason", reason)))] == 0
        assert samples[("slmserve_request_hold_seconds_count", labels)] == 0  # the idle-model panel: 0
        assert samples[("slmserve_engine_wake_seconds_count", (("model_name", model),))] == 0


def test_sleeping_replicas_and_their_wakes_reach_the_hub_s_registry():
    from prometheus_client import generate_latest

    from services.metrics.engine_series import EngineSnapshot
    from services.metrics.hub import MetricsHub

    hub = MetricsHub({"m1": ("app", "engine-m1"), "m2": ("app", "engine-m2")})
    asyncio.run(hub.update_engine(EngineSnapshot("r1", "m1", 8, [], asleep=True, wake_seconds=[0.21, 0.25])))
    asyncio.run(hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=False)))
    asyncio.run(hub.update_engine(EngineSnapshot("r3", "m2", 8, [])))  # no sleep mode
    text = generate_latest(hub.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("slmserve_engine_replicas_asleep", (("model_name", "m1"),))] == 1
    assert samples[("slmserve_engine_replicas_asleep", (("model_name", "m2"),))] == 0
    assert samples[("slmserve_engine_wake_seconds_count", (("model_name", "m1"),))] == 2
    assert samples[("slmserve_engine_wake_seconds_sum", (("model_name", "m1"),))] == pytest.approx(0.46)


def test_a_model_is_asleep_only_when_every_live_replica_sleeps():
    from services.metrics.engine_series import EngineSnapshot
    from services.metrics.hub import MetricsHub

    hub = MetricsHub({"m1": ("app", "engine-m1"), "m2": ("app", "engine-m2"), "m3": ("app", "engine-m3")})
    asyncio.run(hub.update_engine(EngineSnapshot("r1", "m1", 8, [], asleep=True)))
    asyncio.run(hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=False)))  # one awake: m1 answers at once
    asyncio.run(hub.update_engine(EngineSnapshot("r3", "m2", 8, [], asleep=True)))
    asyncio.run(hub.update_engine(EngineSnapshot("r4", "m3", 8, [])))  # no sleep mode
    assert hub.sleeping_models() == ["m2"]
    asyncio.run(hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=True)))
    assert hub.sleeping_models() == ["m1", "m2"]


def _vllm_like_families(running: float, ttft: list[float]):
    return list(_vllm_like_registry(running, ttft).collect())


def _vllm_like_registry(running: float, ttft: list[float]):
    """A replica's vLLM series as vLLM's prometheus_client objects hold them: a gauge, a counter and a
    histogram, each with vLLM's labels."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    labels = {"model_name": "m1", "engine": "0"}
    Gauge("vllm:num_requests_running", "running", list(labels), registry=registry).labels(**labels).set(running)
    Counter("vllm:request_success", "finished", [*labels, "finished_reason"], registry=registry).labels(
        **labels, finished_reason="stop"
    ).inc(len(ttft))
    histogram = Histogram("vllm:time_to_first_token_seconds", "ttft", list(labels), registry=registry)
    for seconds in ttft:
        histogram.labels(**labels).observe(seconds)
    return registry


def test_replicas_render_their_own_series_and_the_hub_joins_them_into_one_valid_exposition():
    """Each family appears once however many replicas report it, every replica's samples keep their
    `replica` label, and NIM's gauges sum the replicas' shipped gauges."""
    import shutil
    import subprocess

    from services.metrics.engine_series import EngineSnapshot, gauges_of, render_series
    from services.metrics.hub import MetricsHub

    hub = MetricsHub({"m1": ("app", "engine-m1")})
    for replica, running, ttft in (("r1", 2, [0.05, 0.2]), ("r2", 3, [0.07])):
        families = _vllm_like_families(running, ttft)
        snapshot = EngineSnapshot(replica, "m1", 8, render_series(families, replica), gauges_of(families))
        asyncio.run(hub.update_engine(snapshot))
    text = hub.exposition().decode()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert sum(line.startswith("# TYPE vllm:time_to_first_token_seconds ") for line in text.splitlines()) == 1
    running = {s.labels["replica"]: s.value for s in families["vllm:num_requests_running"].samples}
    assert running == {"r1": 2, "r2": 3}
    counts = {
        s.labels["replica"]: s.value
        for s in families["vllm:time_to_first_token_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"r1": 2, "r2": 1}
    finished = {s.labels["replica"]: s.value for s in families["vllm:request_success"].samples if "_total" in s.name}
    assert finished == {"r1": 2, "r2": 1}
    nim_running = families["num_requests_running"].samples
    assert [(s.labels, s.value) for s in nim_running] == [({"model_name": "m1"}, 5)]

    promtool = shutil.which("promtool")
    if promtool is not None:  # Prometheus's own linter, where Debian's package is installed (make test)
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        # 1: the text does not parse (a family twice, say); 3: lint findings only (vLLM's names hold ':')
        assert checked.returncode in (0, 3), checked.stdout + checked.stderr


def test_the_replica_picker_s_choice_times_reach_the_hub_as_a_histogram_per_model():
    from services.metrics.hub import MetricsHub
    from services.routing import decisions

    hub = MetricsHub({"m1": ("app", "engine-m1")})
    for seconds in (0.0004, 0.0008, 0.003):
        decisions.timed("engine-m1", seconds)
    asyncio.run(hub.record(decisions.drain()))
    assert decisions.drain() == []  # drained once
    value = hub.registry.get_sample_value
    assert value("slmserve_routing_decision_seconds_count", {"model_name": "m1"}) == 3
    assert value("slmserve_routing_decision_seconds_bucket", {"model_name": "m1", "le": "0.001"}) == 2
    assert value("slmserve_routing_decision_seconds_sum", {"model_name": "m1"}) == pytest.approx(0.0042)


def test_an_unchanged_replica_ships_no_series_and_the_hub_keeps_its_last_ones():
    """An idle engine's series do not change: its replica renders and sends them once, then only its
    gauges; a hub that restarted asks for them whole again."""
    from services.metrics.engine_series import EngineSnapshot, SeriesShipper, gauges_of
    from services.metrics.hub import MetricsHub

    families = _vllm_like_families(1, [0.05])
    shipper = SeriesShipper("r1")
    first = shipper.series(families)
    assert first and shipper.series(families) is None  # unchanged
    hub = MetricsHub({"m1": ("app", "engine-m1")})
    assert asyncio.run(hub.update_engine(EngineSnapshot("r1", "m1", 8, first, gauges_of(families))))
    assert asyncio.run(hub.update_engine(EngineSnapshot("r1", "m1", 8, None, gauges_of(families))))
    assert 'replica="r1"' in hub.exposition().decode()  # the series of the first snapshot

    restarted = MetricsHub({"m1": ("app", "engine-m1")})
    assert not asyncio.run(restarted.update_engine(EngineSnapshot("r1", "m1", 8, None, gauges_of(families))))
    shipper.lost()
    assert shipper.series(families) == first  # sent whole again
    changed = _vllm_like_families(2, [0.05])
    assert shipper.series(changed) is not None  # the running gauge moved


def test_a_snapshot_between_whole_series_reads_what_routing_and_autoscaling_need():
    """The snapshots between two shipments of the whole series collect only SNAPSHOT_SAMPLES: the
    same gauges and time-to-first-token buckets as a whole collect, none of the other series."""
    from services.metrics.engine_series import SNAPSHOT_SAMPLES, TTFT, gauges_of, vllm_families
    from services.metrics.recent import cumulative_buckets

    registry = _vllm_like_registry(3, [0.05, 0.2, 0.7])
    whole, few = vllm_families(registry=registry), vllm_families(SNAPSHOT_SAMPLES, registry)
    assert gauges_of(few) == gauges_of(whole) == {"vllm:num_requests_running": 3}
    assert cumulative_buckets(few, TTFT) == cumulative_buckets(whole, TTFT) and cumulative_buckets(few, TTFT)
    assert {f.name for f in few} == {"vllm:num_requests_running", TTFT}
    assert "vllm:request_success" in {f.name for f in whole}


def test_a_scraper_is_sent_the_vllm_series_only_when_they_changed_and_reads_the_same_text(monkeypatch):
    """A scrape carries the replicas' series (most of its text) only when they moved since the
    scraper's last one: a new shipment, a replica gone stale, or another hub (a restart) answering."""
    from services.metrics import hub as hub_module
    from services.metrics.engine_series import EngineSnapshot, gauges_of, render_series
    from services.metrics.hub import HubScraper, MetricsHub
    from testkit.fake_engine import InProcessHandle

    monkeypatch.setattr(hub_module, "read_deployment_states", lambda apps, with_targets: {})  # Serve's controller

    def ship(hub: MetricsHub, replica: str, running: float) -> None:
        families = _vllm_like_families(running, [0.05])
        snapshot = EngineSnapshot(replica, "m1", 8, render_series(families, replica), gauges_of(families))
        asyncio.run(hub.update_engine(snapshot))

    hub = MetricsHub({"m1": ("app", "engine-m1")})
    ship(hub, "r1", 1)
    sent: list[bool] = []
    original = hub.render

    async def counting_render(batch=None, held_series=None):
        scrape = await original(batch, held_series)
        sent.append(scrape.series is not None)
        return scrape

    hub.render = counting_render  # type: ignore[method-assign]
    scraper = HubScraper(InProcessHandle(hub))
    first = asyncio.run(scraper.text([]))
    assert asyncio.run(scraper.text([])) == first == hub.exposition()
    ship(hub, "r1", 2)
    changed = asyncio.run(scraper.text([]))
    assert changed == hub.exposition() and changed != first
    assert sent == [True, False, True]

    hub.snapshots["r1"].received_at -= 3600  # the replica stopped reporting
    assert 'replica="r1"' not in asyncio.run(scraper.text([])).decode() and sent[-1]

    restarted = MetricsHub({"m1": ("app", "engine-m1")})
    ship(restarted, "r2", 1)
    scraper.hub = InProcessHandle(restarted)
    assert 'replica="r2"' in asyncio.run(scraper.text([])).decode()
