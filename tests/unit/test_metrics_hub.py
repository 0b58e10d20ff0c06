"""The metrics hub's registry, rendered without Ray."""

from __future__ import annotations

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
