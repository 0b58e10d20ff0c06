"""Lint the Grafana dashboard and the Prometheus alert rules: well-formed, and every query names a
metric slmserve really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from services.metrics.definitions import VLLM_SERIES_ON_DASHBOARD, EdgeMetrics

FILES = Path(__file__).resolve().parents[2] / "helm" / "slmserve" / "files"
HUB_GAUGES = {
    "num_requests_running",
    "num_requests_waiting",
    "num_request_max",
    "gpu_cache_usage_perc",
    "slmserve_model_replicas",
    "slmserve_model_ready",
    "slmserve_engine_profile",
    "slmserve_model_target_replicas",
    "slmserve_engine_replicas_asleep",
}
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "histogram_quantile",
    "max",
    "min",
    "and",
    "or",
    "deriv",
    "le",
    "without",
    "model_name",
    "finished_reason",
    "reason",
    "route",
    "status_code",
    "state",
    "clamp_min",
    "__rate_interval",
    "model",
    "m",
    "s",
    "avg",
    "count",
    "on",
    "ignoring",
    "increase",
    "policy",
    "replica",
    "base_model",
    "profile",
    "precision",
    "tensor_parallel_size",
    "phase",
    "tenant",
    "outcome",
}


def exposed_sample_names() -> set[str]:
    names = HUB_GAUGES | VLLM_SERIES_ON_DASHBOARD  # those asserted live in test_metrics.py
    registry = CollectorRegistry()
    EdgeMetrics(registry)
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    tokens = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {token for token in tokens if token not in PROMQL_WORDS}


def test_dashboard_is_well_formed_and_queries_real_metrics():
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    exposed = exposed_sample_names()
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in (
        "first token",
        "inter-token",
        "end-to-end",
        "tokens per second",
        "waiting",
        "kv-cache",
        "failure",
        "replicas",
    ):
        assert topic in titles, topic
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - exposed
            assert not unknown, f"{panel['title']}: unknown metrics {unknown}"


def test_alert_rules_are_well_formed_and_query_real_metrics():
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    exposed = exposed_sample_names()
    alerts = {}
    for group in rules["groups"]:
        assert group["name"]
        for rule in group["rules"]:
            assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            unknown = metric_names(rule["expr"]) - exposed
            assert not unknown, f"{rule['alert']}: unknown metrics {unknown}"
            alerts[rule["alert"]] = rule
    assert {
        "SlmserveTTFTp95OverSLO",
        "SlmserveErrorRatioHigh",
        "SlmserveQueueGrowing",
        "SlmserveNoReadyReplica",
    } <= set(alerts)


def test_metric_name_extraction_sees_unknown_names():
    # The lint itself must be able to fail.
    assert metric_names('sum(rate(not_a_metric_total{model_name="x"}[5m]))') == {"not_a_metric_total"}
