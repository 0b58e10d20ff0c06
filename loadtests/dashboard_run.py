"""A recorded run for docs/metrics.md (issue 19): the embedded default served as `make run` serves
it (with an in-flight bound of 6, so that rejections show), a real Prometheus scraping it every
second, and a load that steps from 1 to 4 to 8 concurrent streams. The main panels of the shipped
Grafana dashboard are then drawn from Prometheus's answers to the dashboard's own queries.

    .venv/bin/python -m loadtests.dashboard_run      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from loadtests.workload import run_level
from testkit.prometheus import DASHBOARD, Prometheus, local_prometheus
from testkit.serving import catalog_variant, serving

MODEL = "smollm2-135m-instruct"
BOUND = 6
PHASES = ((1, 6), (4, 24), (8, 40))  # (concurrent streams, requests); 8 is above the bound
RATE_WINDOW = "15s"
UNITS = {
    "Time to first token": "seconds",
    "Inter-token latency (time per output token)": "seconds",
    "Tokens per second": "tokens/s",
    "Running and waiting requests": "requests",
    "KV-cache usage": "fraction",
    "Success and failure rate": "requests/s",
    "Rejected requests by reason": "requests/s",
    "HTTP requests by route and status": "requests/s",
    "Engine replicas: by state, and the autoscaler's target": "replicas",
    "Engine replicas by profile": "replicas",
}
PANELS = (
    "Time to first token",
    "Inter-token latency (time per output token)",
    "Tokens per second",
    "Running and waiting requests",
    "KV-cache usage",
    "Success and failure rate",
    "Rejected requests by reason",
    "HTTP requests by route and status",
    "Engine replicas: by state, and the autoscaler's target",
    "Engine replicas by profile",
)


def dashboard_panels() -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(legend, PromQL)], the dashboard's own queries with Grafana's variables filled."""
    panels = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels[panel["title"]] = [
            (
                target.get("legendFormat", ""),
                target["expr"].replace("$__rate_interval", RATE_WINDOW).replace('=~"$model"', '=~".+"'),
            )
            for target in panel["targets"]
        ]
    return panels


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return template or ", ".join(f"{k}={v}" for k, v in labels.items())


def draw(prometheus: Prometheus, start: float, end: float, path: Path) -> dict[str, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard_panels()
    figure, axes = plt.subplots(5, 2, figsize=(13, 16))
    drawn: dict[str, int] = {}
    for axis, title in zip(axes.flat, PANELS, strict=True):
        lines = 0
        for template, expr in panels[title]:
            for series in prometheus.query_range(expr, start, end, 2):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if not points:
                    continue
                if title == "HTTP requests by route and status" and series["metric"].get("route") == "/metrics":
                    continue  # Prometheus's own scrapes: one a second, every second
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, label=legend(template, series["metric"])[:40])
                lines += 1
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("seconds into the run", fontsize=8)
        axis.set_ylabel(UNITS[title], fontsize=8)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=7)
        drawn[title] = lines
    figure.suptitle(
        f"slmserve dashboard panels from a real Prometheus (rate window {RATE_WINDOW}); "
        f"load: {', '.join(f'{c} streams' for c, _ in PHASES)}",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    started = started_at()

    def bounded(catalog: dict) -> None:
        catalog["models"][0]["max_in_flight"] = BOUND

    with serving(catalog_variant("cpu", bounded)) as server, local_prometheus(server.base_url) as prometheus:
        prometheus.wait_for_scrapes(2)
        start = time.time()
        results = []
        for concurrency, requests in PHASES:
            print(f"[dashboard] {concurrency} concurrent streams, {requests} requests", flush=True)
            results.append(
                asyncio.run(
                    run_level(
                        "slmserve",
                        f"{server.base_url}/v1/chat/completions",
                        MODEL,
                        concurrency,
                        requests,
                        40,
                        args.max_tokens,
                    )
                )
            )
            time.sleep(5)
        prometheus.wait_for_scrapes(3)
        end = time.time()
        drawn = draw(prometheus, start, end, ROOT / "docs" / "metrics_dashboard.png")
    print(f"[dashboard] lines per panel: {drawn}", flush=True)
    summary = ", ".join(f"{c} streams: {r.errors} of {n} refused" for (c, n), r in zip(PHASES, results, strict=True))
    section = f"""## What the dashboard shows: a recorded run

Run {started}: `.venv/bin/python -m loadtests.dashboard_run`. The embedded default (the `cpu`
catalog, with `max_in_flight: {BOUND}` so that rejections show) on 2 CPU cores, Debian's Prometheus
scraping it once a second with the chart's ServiceMonitor labels (`testkit/prometheus.py`), and a
load of {", ".join(f"{n} streams {c} at a time" for c, n in PHASES)} ({args.max_tokens} tokens each;
{summary}; the 429s of the last step are the bound at work, and a refused client sends its next
request at once). Each panel is the shipped dashboard's
own PromQL (`$__rate_interval` = {RATE_WINDOW}), answered by Prometheus over its HTTP API.

![dashboard panels](metrics_dashboard.png)
"""
    write_section(ROOT / "docs" / "metrics.md", "dashboard-run", section)
    print("[dashboard] wrote docs/metrics.md and docs/metrics_dashboard.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
