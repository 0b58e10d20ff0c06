"""`slmserve usage`: each tenant's tokens and requests per model, from the platform's own counters
(`--url`: everything since the platform started, exact) or from Prometheus (`--prometheus URL
--since 1h`: the increase over a window, as Prometheus computes it from its scrapes)."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from services.metrics.definitions import TENANT_OUTCOMES

COUNTERS = {
    "slmserve_tenant_prompt_tokens": "prompt_tokens",
    "slmserve_tenant_generation_tokens": "completion_tokens",
    "slmserve_tenant_requests": "requests",
}
WINDOW = re.compile(r"^[1-9][0-9]*[smhdw]$")  # a Prometheus range: 90s, 15m, 1h, 7d


@dataclass
class TenantUsage:
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    requests: dict[str, float] = field(default_factory=dict)  # by outcome


Usage = dict[tuple[str, str], TenantUsage]  # (tenant, model) ->


def _add(usage: Usage, counter: str, labels: dict[str, str], value: float) -> None:
    row = usage.setdefault((labels["tenant"], labels["model_name"]), TenantUsage())
    if counter == "requests":
        row.requests[labels["outcome"]] = row.requests.get(labels["outcome"], 0.0) + value
    else:
        setattr(row, counter, getattr(row, counter) + value)


def from_metrics_text(text: str) -> Usage:
    usage: Usage = {}
    for family in text_string_to_metric_families(text):
        counter = COUNTERS.get(family.name)
        if counter is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                _add(usage, counter, sample.labels, sample.value)
    return usage


def from_platform(base_url: str, api_key: str = "") -> Usage:
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return from_metrics_text(response.read().decode())


def from_prometheus(prometheus_url: str, since: str) -> Usage:
    if not WINDOW.match(since):
        raise ValueError(f"--since must be a Prometheus duration such as 15m, 1h or 7d, not {since!r}")
    usage: Usage = {}
    for name, counter in COUNTERS.items():
        by = "tenant, model_name, outcome" if counter == "requests" else "tenant, model_name"
        query = urllib.parse.urlencode({"query": f"sum by ({by}) (increase({name}_total[{since}]))"})
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/api/v1/query?{query}", timeout=30) as response:
            for series in json.loads(response.read())["data"]["result"]:
                _add(usage, counter, series["metric"], float(series["value"][1]))
    return usage


def table(usage: Usage) -> str:
    """One line per tenant and model that used anything; integers (Prometheus extrapolates windows)."""
    header = " ".join(f"{outcome:>9}" for outcome in TENANT_OUTCOMES)
    lines = [f"{'tenant':<20} {'model':<28} {'prompt':>10} {'completion':>10} {header}"]
    used = [
        (key, row)
        for key, row in sorted(usage.items())
        if row.prompt_tokens or row.completion_tokens or any(row.requests.values())
    ]
    for (tenant, model), row in used:
        counts = " ".join(f"{row.requests.get(outcome, 0):>9.0f}" for outcome in TENANT_OUTCOMES)
        lines.append(f"{tenant:<20} {model:<28} {row.prompt_tokens:>10.0f} {row.completion_tokens:>10.0f} {counts}")
    prompt, completion = sum(row.prompt_tokens for _, row in used), sum(row.completion_tokens for _, row in used)
    lines.append(f"{'total':<49} {prompt:>10.0f} {completion:>10.0f}")
    return "\n".join(lines)
