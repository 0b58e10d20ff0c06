"""testkit.exposition reads what the hub renders: the load tools and live tests read /metrics through it."""

from __future__ import annotations

import asyncio

from services.metrics.hub import MetricsHub
from services.metrics.records import CompletionRecord
from testkit.exposition import Exposition


def test_samples_are_found_by_exact_name_and_labels_and_summed_or_keyed():
    hub = MetricsHub({"m1": ("app-1", "engine-m1"), "m2": ("app-2", "engine-m2")}, tenants=["t"])
    records = [
        CompletionRecord("m1", True, "m1", "stop", prompt_tokens=5, generation_tokens=3, ingress_s=0.002, tenant="t"),
        CompletionRecord("m2", True, "m2", "length", prompt_tokens=7, generation_tokens=4, tenant="t"),
        CompletionRecord("m2", False, "m2", tenant="t"),
    ]
    asyncio.run(hub.record(records))
    metrics = Exposition.parse(hub.exposition().decode())

    assert metrics.total("generation_tokens_total") == 7
    assert metrics.total("generation_tokens_total", model_name="m2") == 4
    assert metrics.total("generation_tokens") == 0  # the exact sample name, not the family's
    assert metrics.by("model_name", "request_success_total") == {"m1": 1, "m2": 1}
    assert metrics.by("outcome", "slmserve_tenant_requests_total", model_name="m2") == {
        "success": 1,
        "failure": 1,
        "rejected": 0,
    }
    ingress = metrics.by("le", "slmserve_platform_overhead_seconds_bucket", model_name="m1", phase="ingress")
    assert ingress["0.001"] == 0 and ingress["0.0025"] == 1 and ingress["+Inf"] == 1
    assert metrics.values("no_such_series") == []
