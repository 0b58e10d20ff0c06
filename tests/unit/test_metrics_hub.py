"""The metrics hub's registry, rendered without Ray."""

from __future__ import annotations

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

    from services.metrics.hub import EngineSnapshot, MetricsHub

    hub = MetricsHub({"m1": ("app", "engine-m1"), "m2": ("app", "engine-m2")})
    hub.update_engine(EngineSnapshot("r1", "m1", 8, [], asleep=True, wake_seconds=[0.21, 0.25]))
    hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=False))
    hub.update_engine(EngineSnapshot("r3", "m2", 8, []))  # no sleep mode
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
    from services.metrics.hub import EngineSnapshot, MetricsHub

    hub = MetricsHub({"m1": ("app", "engine-m1"), "m2": ("app", "engine-m2"), "m3": ("app", "engine-m3")})
    hub.update_engine(EngineSnapshot("r1", "m1", 8, [], asleep=True))
    hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=False))  # one awake: m1 answers at once
    hub.update_engine(EngineSnapshot("r3", "m2", 8, [], asleep=True))
    hub.update_engine(EngineSnapshot("r4", "m3", 8, []))  # no sleep mode
    assert hub.sleeping_models() == ["m2"]
    hub.update_engine(EngineSnapshot("r2", "m1", 8, [], asleep=True))
    assert hub.sleeping_models() == ["m1", "m2"]
