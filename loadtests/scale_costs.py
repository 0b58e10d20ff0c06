"""What the platform's central pieces cost as a deployment grows (issue 32 item 2, in-process part):
- the MetricsHub: what one engine replica ships every second (its vLLM snapshot, pickled as Ray sends
  it) and what one scrape of `/metrics` costs the hub to render, at 1 to 256 replicas;
- the replica choice (services/routing/policies.py, what the ReplicaPicker runs per request): CPU per
  decision at 1 to 256 replicas;
- the LimitBroker: admissions (admit and release) per second with 0 to 50,000 requests in flight.
Each piece is the real class, driven in this process: its own work, without Ray's calls around it.
Writes docs/scale_costs.md and docs/scale_hub.png (docs/scale.md reads them).

    .venv/bin/python -m loadtests.scale_costs [--replicas 1,4,16,64,256] [--rounds 5]

The vLLM series are a real engine's: one `slmserve serve` of the embedded model is started, asked a
few questions (so its histograms have buckets), and scraped once; its `vllm:*` families, without the
`replica` label the hub adds, stand for every replica's snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pickle
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from services.edge.limits import Admitted, LimitBroker
from services.metrics.engine_series import EngineSnapshot, Families, gauges_of, render_series
from services.metrics.hub import MetricsHub
from services.routing.policies import ReplicaChooser, RoutingKnobs, routing_stats
from testkit.serving import serving

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def one_engine_families() -> list[Metric]:
    with serving("cpu") as server:
        for n in range(4):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {n + 3}."}], "max_tokens": 8}
            httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        time.sleep(2)  # the engine's next snapshot carries them
        text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    families = []
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:"):
            continue
        bare = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            labels = {key: value for key, value in sample.labels.items() if key != "replica"}
            bare.add_sample(sample.name, labels, sample.value)
        families.append(bare)
    return families


def measure(families: list[Metric], replicas: int, rounds: int) -> dict[str, Any]:
    hub = MetricsHub({MODEL: ("app", "engine-m")})
    replica_render_ms = _timed_ms(lambda: render_series(families, "replica0000"), 20)
    snapshots = [
        EngineSnapshot(f"replica{i:04d}", MODEL, 64, render_series(families, f"replica{i:04d}"), gauges_of(families))
        for i in range(replicas)
    ]
    shipped = [pickle.dumps(snapshot) for snapshot in snapshots]

    async def receive() -> float:
        started = time.perf_counter()
        for payload in shipped:
            await hub.update_engine(pickle.loads(payload))  # what the hub's process does with each arrival
        return (time.perf_counter() - started) / replicas * 1e6

    receive_us = asyncio.run(receive())
    renders, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = len(hub.exposition())
        renders.append(time.perf_counter() - started)
    before = []
    for _ in range(max(1, rounds // 2)):
        started = time.perf_counter()
        _render_in_the_hub(families, replicas)
        before.append(time.perf_counter() - started)
    return {
        "replicas": replicas,
        "snapshot_bytes": len(shipped[0]),
        "replica_render_ms": replica_render_ms,
        "snapshot_pickle_ms": _timed_ms(lambda: pickle.dumps(snapshots[0]), 20),
        "receive_us": receive_us,
        "render_ms": statistics.median(renders) * 1000,
        "render_before_ms": statistics.median(before) * 1000,
        "render_bytes": size,
        "samples_per_replica": sum(len(family.samples) for family in families),
    }


def _render_in_the_hub(families: list[Metric], replicas: int) -> bytes:
    """The baseline: the hub formats every replica's samples itself on each scrape (slmserve before
    the replicas rendered their own series)."""

    merged: dict[str, Metric] = {}
    for i in range(replicas):
        for family in families:
            out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for sample in family.samples:
                out.add_sample(sample.name, {**sample.labels, "replica": f"replica{i:04d}"}, sample.value)
    return generate_latest(Families(list(merged.values())))  # type: ignore[arg-type]


@dataclass
class StandInReplica:
    """What the replica choice reads of a replica (Ray's RunningReplica has both)."""

    replica_id: str
    routing_stats: dict[str, Any] = field(default_factory=dict)


def routing_cost(replicas: int, decisions: int = 2000) -> dict[str, Any]:
    """Microseconds per decision of the default policy (prefix affinity over 2,000-character chat
    prompts, 64 conversations, reports a second old) across `replicas` replicas."""
    chooser = ReplicaChooser(RoutingKnobs())
    pool = [StandInReplica(f"r{i:04d}") for i in range(replicas)]
    for replica in pool:
        replica.routing_stats = routing_stats(ongoing=2, kv_usage=0.3)
    system = [f"You are assistant {n}. " + "Answer briefly and cite sources. " * 60 for n in range(64)]
    bodies = [
        {
            "model": "m",
            "messages": [{"role": "system", "content": system[n % 64]}, {"role": "user", "content": f"q{n}"}],
        }
        for n in range(decisions)
    ]
    started = time.perf_counter()
    reasons: dict[str, int] = {}
    for body in bodies:
        _, reason = chooser.choose(pool, body, None)
        reasons[reason] = reasons.get(reason, 0) + 1
    per_decision_us = (time.perf_counter() - started) / decisions * 1e6
    return {"replicas": replicas, "decision_us": per_decision_us, "reasons": reasons}


def broker_cost(in_flight: int, pairs: int = 5000) -> dict[str, Any]:
    """Admissions per second (an admit and its release) with `in_flight` other requests holding tickets."""
    catalog = {"models": [{"name": "m", "source": "org/m", "max_in_flight": 10_000_000}]}
    broker = LimitBroker(catalog, recovery_s=0)

    async def run() -> float:
        held = [await broker.admit("m", "anonymous", 100) for _ in range(in_flight)]
        assert all(isinstance(ticket, Admitted) for ticket in held)
        started = time.perf_counter()
        for _ in range(pairs):
            admitted = await broker.admit("m", "anonymous", 100)
            assert isinstance(admitted, Admitted)
            await broker.release(admitted.ticket)
        return time.perf_counter() - started

    seconds = asyncio.run(run())
    return {"in_flight": in_flight, "admissions_per_s": pairs / seconds}


def _timed_ms(call: Any, times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        call()
    return (time.perf_counter() - started) / times * 1000


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    counts = [row["replicas"] for row in rows]
    left.plot(
        counts,
        [row["render_before_ms"] for row in rows],
        marker="o",
        color="tab:gray",
        label="hub renders every replica's samples (before)",
    )
    left.plot(counts, [row["render_ms"] for row in rows], marker="o", label="replicas render, hub joins (now)")
    left.axhline(100, color="tab:red", linestyle=":", label="target at 64 replicas")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("engine replicas")
    left.set_ylabel("one /metrics scrape of the hub (ms, median)")
    left.legend(fontsize=8)
    right.plot(counts, [row["render_bytes"] / 1e6 for row in rows], marker="o", color="tab:orange")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("engine replicas")
    right.set_ylabel("/metrics size (MB)")
    figure.suptitle("The MetricsHub: one scrape's CPU, and what it returns")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,4,16,64,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    families = one_engine_families()
    rows = []
    for count in (int(value) for value in args.replicas.split(",")):
        rows.append(measure(families, count, args.rounds))
        row = rows[-1]
        print(
            f"[hub-scale] {count} replicas: scrape {row['render_ms']:.1f} ms (hub rendering it all: "
            f"{row['render_before_ms']:.1f} ms), {row['render_bytes'] / 1e3:.0f} kB; snapshot "
            f"{row['snapshot_bytes'] / 1e3:.1f} kB, rendered on its replica in {row['replica_render_ms']:.2f} ms",
            flush=True,
        )
    lines = [
        "## The MetricsHub",
        "",
        f"Run {started}: `.venv/bin/python -m loadtests.scale_costs --replicas {args.replicas} --rounds {args.rounds}` "
        "(this machine: 2 cores). One real CPU engine's vLLM series "
        f"({rows[0]['samples_per_replica']} samples) stand for each replica's snapshot. Each replica renders "
        "its own series once a second; the hub unpickles what arrives and, per scrape, joins the text. "
        '"Before" is the hub formatting every replica\'s samples itself on each scrape, measured in the '
        "same run.",
        "",
        "| replicas | replica: render its series (ms, each second) | snapshot (kB, pickled) | pickling it (ms) "
        "| hub: receive one (µs) | hub: one /metrics scrape (ms) | before (ms) | /metrics size (kB) |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {row['replicas']} | {row['replica_render_ms']:.2f} | {row['snapshot_bytes'] / 1e3:.1f} "
            f"| {row['snapshot_pickle_ms']:.2f} | {row['receive_us']:.0f} | {row['render_ms']:.1f} "
            f"| {row['render_before_ms']:.1f} | {row['render_bytes'] / 1e3:.0f} |"
            for row in rows
        ),
        "",
        "![hub](scale_hub.png)",
        "",
    ]
    routes = [routing_cost(count) for count in (int(value) for value in args.replicas.split(","))]
    for row in routes:
        print(f"[scale-costs] choice among {row['replicas']}: {row['decision_us']:.0f} us {row['reasons']}", flush=True)
    lines += [
        "## The replica choice",
        "",
        "The default policy (prefix affinity) choosing among stand-in replicas for 2,000 requests of 64 "
        "conversations with 2,000-character system prompts: the ReplicaPicker's own CPU per request, "
        "without the Ray handle's work around it.",
        "",
        "| replicas | CPU per decision (µs) | decisions by reason |",
        "|---|---|---|",
        *(f"| {row['replicas']} | {row['decision_us']:.0f} | {row['reasons']} |" for row in routes),
        "",
    ]
    brokers = [broker_cost(count) for count in (0, 1000, 10_000, 50_000)]
    for row in brokers:
        print(f"[scale-costs] broker with {row['in_flight']} in flight: {row['admissions_per_s']:.0f}/s", flush=True)
    lines += [
        "## The LimitBroker",
        "",
        "Admissions per second (an admit and its release, one at a time) with other requests holding tickets, "
        "for a model with an in-flight bound: the broker's own CPU, without the Ray calls around it.",
        "",
        "| requests in flight | admissions per second |",
        "|---|---|",
        *(f"| {row['in_flight']} | {row['admissions_per_s']:.0f} |" for row in brokers),
        "",
    ]
    section = "\n".join(lines)
    (out / "scale_costs.md").write_text("# The central pieces' costs (generated)\n\n" + section)
    plot(rows, out / "scale_hub.png")
    print(section, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
