"""A real Prometheus (Debian's, on 127.0.0.1) scraping the live application the way the chart's
ServiceMonitor does on a cluster (testkit/prometheus.py), with the chart's alert rules loaded.
After a short load, every PromQL expression of the shipped Grafana dashboard must return data
through Prometheus's HTTP API, the NIM metric names must answer, and no alert may fire on a
healthy system (issue 19)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from testkit.live import API_KEY
from testkit.prometheus import DASHBOARD, Prometheus, local_prometheus, prometheus_binary

pytestmark = pytest.mark.live
# NIM 1.x's names (docs.nvidia.com NIM for LLMs, "Observability"), as scraped
NIM_SERIES = (
    "num_requests_running",
    "num_requests_waiting",
    "num_request_max",
    "gpu_cache_usage_perc",
    "prompt_tokens_total",
    "generation_tokens_total",
    "time_to_first_token_seconds_bucket",
    "time_per_output_token_seconds_bucket",
    "e2e_request_latency_seconds_bucket",
    "request_prompt_tokens_bucket",
    "request_generation_tokens_bucket",
    "request_success_total",
    "request_failure_total",
    "request_finish_total",
)
# Series that exist only where the catalog gives a model a choice of replicas (a request router
# decides): the test catalog has one replica per model. tests/live/two_replicas/test_routing.py reads them on two.
NEEDS_REPLICA_CHOICE = {"slmserve_routing_decisions_total"}


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "30s").replace('=~"$model"', '=~".+"'))
        for panel in panels
        for target in panel["targets"]
    ]


@pytest.fixture(scope="module")
def prometheus(live_server, client) -> Iterator[Prometheus]:
    if prometheus_binary() is None:
        pytest.skip("Prometheus is not installed and deploy/tools/install_debian.sh could not install it")
    with local_prometheus(live_server.base_url, api_key=API_KEY, interval_s=1) as running:
        running.wait_for_scrapes(1)
        for entry in live_server.catalog.models:  # a little of everything the panels count
            for stream in (True, False):
                response = client.chat.completions.create(
                    model=entry.name,
                    messages=[{"role": "user", "content": "Count to five."}],
                    max_tokens=8,
                    stream=stream,
                )
                if stream:
                    assert [chunk for chunk in response]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        running.wait_for_scrapes(3)
        yield running


def test_the_app_is_scraped_with_the_service_monitors_labels(prometheus):
    (target,) = prometheus.targets()
    assert target["health"] == "up", target["lastError"]
    assert {key: target["labels"][key] for key in ("job", "namespace", "service", "endpoint")} == {
        "job": "slmserve",
        "namespace": "slmserve",
        "service": "slmserve",
        "endpoint": "http",
    }


def test_every_dashboard_query_returns_data(prometheus, live_server):
    choice = any(entry.has_replica_choice for entry in live_server.catalog.models)
    empty = [(title, expr) for title, expr in dashboard_queries() if not prometheus.query(expr)]
    expected_empty = [
        (title, expr)
        for title, expr in dashboard_queries()
        if not choice and any(name in expr for name in NEEDS_REPLICA_CHOICE)
    ]
    assert empty == expected_empty


def test_the_nim_metric_names_answer_for_every_model(prometheus, live_server):
    models = {entry.name for entry in live_server.catalog.models}
    for name in NIM_SERIES:
        answered = {series["metric"].get("model_name") for series in prometheus.query(name)}
        assert models <= answered, f"{name}: {sorted(models - answered)} missing"
    (served,) = prometheus.query(f'sum(request_success_total{{model_name="{live_server.catalog.models[0].name}"}})')
    assert float(served["value"][1]) >= 2


def test_the_alert_rules_load_and_stay_quiet_on_a_healthy_system(prometheus):
    rules = prometheus.rules()
    assert {rule["name"] for rule in rules} >= {
        "SlmserveTTFTp95OverSLO",
        "SlmserveErrorRatioHigh",
        "SlmserveQueueGrowing",
        "SlmserveNoReadyReplica",
    }
    assert all(rule["health"] == "ok" for rule in rules), rules
    # None fires. One may be pending: on 2 CPU cores a busy minute can take TTFT p95 past the 2 s SLO,
    # and the rule waits 10 minutes before it fires.
    assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []


def test_usage_over_a_window_comes_from_prometheus_per_tenant(prometheus, live_server, capsys):
    """`slmserve usage --prometheus`: the session's tenant appears with the tokens its requests used
    (Prometheus extrapolates a window's increase, so the figures are checked against its own sums)."""
    from services.cli import main as slmserve

    assert slmserve(["usage", "--prometheus", prometheus.url, "--since", "10m"]) == 0
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in capsys.readouterr().out.splitlines()[2:-1]}
    model = live_server.catalog.models[0].name
    prompt, completion = (float(value) for value in rows[("tests", model)][:2])
    (generated,) = prometheus.query(
        f'sum(increase(slmserve_tenant_generation_tokens_total{{tenant="tests",model_name="{model}"}}[10m]))'
    )
    assert completion > 0 and prompt > completion / 100
    assert abs(completion - float(generated["value"][1])) <= max(2.0, 0.2 * completion)
