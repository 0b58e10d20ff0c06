"""docs/scale_live.md and docs/scale_live.png (or another stem) from loadtests/scale.py's runs."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

COMPONENTS = (
    "HAProxy",
    "ReplicaPicker",
    "engine replicas (stand-in)",
    "LimitBroker",
    "MetricsHub",
    "PlatformIngress",
    "Serve controller",
    "Ray (raylet, GCS)",
    "Ray (other)",
)
CLIENT = "load generator"


SERVED_TTFT_P99_MS = 1000.0  # the stand-in's own TTFT is tens of ms: seconds mean requests queued


def _served(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps the platform kept up with: achieved within 10% of the rate, under 1% failures, and
    TTFT p99 under SERVED_TTFT_P99_MS (an open-loop load is answered late, not refused, once a piece saturates)."""
    return [
        step
        for step in run["steps"]
        if step["achieved_per_s"] >= 0.9 * step["rate"]
        and sum(step["failures"].values()) <= 0.01 * step["sent"]
        and step["ttft_p99_ms"] <= SERVED_TTFT_P99_MS
    ]


def _platform_cpu(step: dict[str, Any]) -> float:
    return sum(seconds for name, seconds in step["cpu_per_1000"].items() if name != CLIENT)


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


THIS_MACHINE = "this machine (2 cores, 24 GiB)"


def write_report(
    runs: list[dict[str, Any]], out: Path, command: str, machine: str = THIS_MACHINE, stem: str = "scale_live"
) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# The platform under Ray with stand-in engines (generated)",
        "",
        f"Run {when} on {machine}: `.venv/bin/{command}`. Stand-in engines "
        "(loadtests/standin: vLLM's pace for Phi-3.5-mini on an H200, no compute) behind the real HAProxy, "
        "ReplicaPicker, edge, metrics hub and limit broker; streamed chats of 16 tokens with 600-character "
        "system prompts in 64 conversations, open-loop Poisson arrivals from a separate process. Every "
        "figure is one step of one run; the machine's cores are shared by every process below and the "
        "load generator.",
        "",
        "## Each replica count",
        "",
        "| engine replicas | start (s) | memory at idle (GiB, all) | hub CPU at idle (ms/s) | per replica (ms/s) "
        "| /metrics scrape (ms) | /metrics size (kB) | most requests/s served | decision p50 / p99 (ms) "
        "| decisions per ReplicaPicker core-second | platform CPU per 1,000 requests (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        served = _served(run)
        top = max(served, key=lambda step: step["achieved_per_s"]) if served else None
        picker_cpu = top["cpu_per_1000"].get("ReplicaPicker", 0.0) * top["ok"] / 1000 if top else 0.0
        per_core = top["decisions"] / picker_cpu if top and picker_cpu > 0 else math.nan
        memory = sum(run["idle_rss_mb"].values()) / 1024
        lines.append(
            f"| {run['replicas']} | {run['start_s']:.0f} | {memory:.1f} | {run['hub_idle_ms_per_s']:.1f} "
            f"| {run['hub_idle_ms_per_s'] / run['replicas']:.2f} | {run['scrape_ms']:.1f} | {run['scrape_kb']:.0f} "
            f"| {_fmt(top['achieved_per_s'] if top else math.nan)} "
            f"| {_fmt(top['decision_p50_ms'] if top else math.nan, 2)} / "
            f"{_fmt(top['decision_p99_ms'] if top else math.nan, 2)} "
            f"| {_fmt(per_core, 0)} | {_fmt(_platform_cpu(top) if top else math.nan, 2)} |"
        )
    lines += [
        "",
        "At idle (10 s, no requests), cores in use by component:",
        "",
        "| engine replicas " + "".join(f"| {name} " for name in COMPONENTS) + "| all |",
        "|---" + "|---" * len(COMPONENTS) + "|---|",
        *(
            f"| {run['replicas']} "
            + "".join(f"| {run['idle_cores'].get(name, 0.0):.3f} " for name in COMPONENTS)
            + f"| {sum(run['idle_cores'].values()):.2f} |"
            for run in runs
        ),
    ]
    lines += [
        "",
        "Decision times are the ReplicaPicker's own (`slmserve_routing_decision_seconds`, interpolated "
        "within its buckets); one replica has no ReplicaPicker (nothing to choose). The platform's CPU is "
        "every process but the load generator's, the stand-ins' included (in direct mode the edge runs in "
        "the engine replica's process).",
        "",
        "## Each step: CPU seconds per 1,000 requests, by component",
        "",
        "| replicas | rate (/s) | served (/s) | failures | TTFT p50 / p99 (ms) | cores used (machine) "
        + "".join(f"| {name} " for name in (*COMPONENTS, CLIENT))
        + "| busiest (cores) |",
        "|---|---|---|---|---|---" + "|---" * (len(COMPONENTS) + 1) + "|---|",
    ]
    for run in runs:
        for step in run["steps"]:
            busiest = max(
                ((name, cores) for name, cores in step["cores"].items() if name != CLIENT), key=lambda item: item[1]
            )
            failures = sum(step["failures"].values())
            lines.append(
                f"| {run['replicas']} | {step['rate']:g} | {step['achieved_per_s']:.1f} | {failures} "
                f"| {step['ttft_p50_ms']:.0f} / {step['ttft_p99_ms']:.0f} | {sum(step['cores'].values()):.2f} "
                + "".join(f"| {step['cpu_per_1000'].get(name, 0.0):.2f} " for name in (*COMPONENTS, CLIENT))
                + f"| {busiest[0]} ({busiest[1]:.2f}) |"
            )
    lines.append("")
    lines.append(f"![CPU per request by component, and the hub per replica]({stem}.png)")
    lines.append("")
    (out / f"{stem}.md").write_text("\n".join(lines))
    _plot(runs, out / f"{stem}.png")
    print("\n".join(lines), flush=True)


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, bottoms = [], [0.0] * len(runs)
    rate = min(run["steps"][0]["rate"] for run in runs)
    for name in (*COMPONENTS, CLIENT):
        values = []
        for run in runs:
            step = next((s for s in run["steps"] if s["rate"] == rate), run["steps"][0])
            values.append(step["cpu_per_1000"].get(name, 0.0))
        left.bar([str(run["replicas"]) for run in runs], values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        labels.append(name)
    left.set_xlabel("engine replicas")
    left.set_ylabel(f"CPU seconds per 1,000 requests at {rate:g}/s")
    left.legend(fontsize=7)
    counts = [run["replicas"] for run in runs]
    right.plot(counts, [run["hub_idle_ms_per_s"] for run in runs], marker="o", label="hub CPU at idle (ms/s)")
    right.plot(counts, [run["scrape_ms"] for run in runs], marker="o", label="/metrics scrape (ms)")
    right.set_xscale("log", base=2)
    right.set_xlabel("engine replicas")
    right.legend(fontsize=8)
    figure.suptitle("The platform's central pieces under Ray, stand-in engines")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
