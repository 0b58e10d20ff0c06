"""Routing benchmark (issue 17): the multi-turn workload over two engine replicas of the embedded
model, once per policy, plus one replica with a KV cache large enough for every conversation (the
ceiling a single cache reaches). Writes a table and a plot to docs/.

`.venv/bin/python -m loadtests.routing_bench` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from loadtests.workload import percentile
from testkit.conversations import cache_counts_covering, hit_rate, prefix_cache_counts, run_conversations
from testkit.serving import catalog_variant, serving

MODEL = "smollm2-135m-instruct"
KV_PER_REPLICA = 512 * 2**20  # about 11,000 float32 tokens of SmolLM2: less than all conversations need
SINGLE = "one replica, cache for all"


def variant(policy: str, replicas: int, kv_bytes: int):
    def change(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["deployment"]["num_replicas"] = replicas
        entry["engine_args"]["kv_cache_memory_bytes"] = kv_bytes
        entry["routing"] = {"policy": policy}
        entry["env"] = {"OMP_NUM_THREADS": str(2 // replicas), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}

    return catalog_variant("cpu", change)


def measure(
    label: str,
    catalog: Path,
    policy: str,
    replicas: int,
    model: str,
    args: argparse.Namespace,
    extra_body: dict | None = None,
) -> dict:
    """One setup: serve `catalog`, run the multi-turn workload once, read the engines' prefix-cache
    counters before and after. Shared with the GPU run (loadtests/gpu/run_gpu_routing.py)."""
    print(f"[routing] {label}: starting", flush=True)
    with serving(catalog, replicas=replicas) as server:
        metrics = f"{server.base_url}/metrics"
        before = prefix_cache_counts(httpx.get(metrics, timeout=30).text)
        turns, wall = asyncio.run(
            run_conversations(
                server.base_url,
                model,
                conversations=args.conversations,
                turns=args.turns,
                system_words=args.system_words,
                max_tokens=args.max_tokens,
                concurrency=args.concurrency,
                session_header="X-Session-Id" if policy == "session" else None,
                extra_body=extra_body,
            )
        )
        after = cache_counts_covering(lambda: httpx.get(metrics, timeout=30).text, before, turns)
        rate = hit_rate(before, after)
    later = [t.ttft_s for t in turns if t.turn > 1 and t.ttft_s is not None]
    every = [t.ttft_s for t in turns if t.ttft_s is not None]
    homes = {c: {t.replica for t in turns if t.conversation == c} for c in range(args.conversations)}
    row = {
        "label": label,
        "hit_rate": rate,
        "ttft_p50": percentile(every, 50),
        "ttft_p95": percentile(every, 95),
        "later_ttft_p50": percentile(later, 50),
        "tok_s": sum(t.output_tokens for t in turns) / wall,
        "errors": sum(t.status != 200 for t in turns),
        "sticky": sum(len(r) == 1 for r in homes.values()),
        "requests": len(turns),
    }
    print(
        f"[routing] {label}: hit rate {rate:.3f}, TTFT p50 {row['ttft_p50'] * 1000:.0f} ms, "
        f"later turns p50 {row['later_ttft_p50'] * 1000:.0f} ms, {row['tok_s']:.1f} tok/s, "
        f"{row['sticky']}/{args.conversations} conversations on one replica, {row['errors']} errors",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["label"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(labels, [row["hit_rate"] for row in rows], color="tab:blue")
    left.set(ylabel="prefix-cache hit rate", title="Prefix-cache hits (vLLM counters)", ylim=(0, 1))
    width = 0.4
    positions = range(len(rows))
    right.bar([p - width / 2 for p in positions], [row["ttft_p50"] * 1000 for row in rows], width, label="p50")
    right.bar([p + width / 2 for p in positions], [row["ttft_p95"] * 1000 for row in rows], width, label="p95")
    right.set_xticks(list(positions), labels)
    right.set(ylabel="TTFT (ms)", title="Time to first token, every turn")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=15)
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def results_table(rows: list[dict], conversations: int) -> str:
    table = (
        "| setup | prefix-cache hit rate | TTFT p50 ms | TTFT p95 ms | later turns TTFT p50 ms | out tok/s | "
        "conversations on one replica | errors |\n|---|---|---|---|---|---|---|---|\n"
    )
    for row in rows:
        table += (
            f"| {row['label']} | {row['hit_rate']:.3f} | {row['ttft_p50'] * 1000:.0f} | "
            f"{row['ttft_p95'] * 1000:.0f} | {row['later_ttft_p50'] * 1000:.0f} | {row['tok_s']:.1f} | "
            f"{row['sticky']}/{conversations} | {row['errors']}/{row['requests']} |\n"
        )
    by = {row["label"]: row for row in rows}
    p2, affinity = by.get("power-of-two"), by.get("prefix-affinity")
    if p2 and affinity:
        table += (
            f"\nprefix-affinity over power-of-two: hit rate {affinity['hit_rate'] / p2['hit_rate']:.2f}x, "
            f"TTFT p50 {affinity['ttft_p50'] / p2['ttft_p50']:.2f}x, "
            f"tok/s {affinity['tok_s'] / p2['tok_s']:.2f}x"
        )
        if (single := by.get(SINGLE)) is not None:
            table += f"; hit rate {affinity['hit_rate'] / single['hit_rate']:.2f}x one replica's"
        table += ".\n"
    return table


def write_report(rows: list[dict], args: argparse.Namespace, started: str) -> None:
    table = results_table(rows, args.conversations)
    section = f"""## CPU: replica routing on a multi-turn workload

Run {started}. Two replicas of SmolLM2-135M-Instruct (float32, one core each, a KV cache of
{KV_PER_REPLICA // 2**20} MiB each, about 11,000 tokens), direct mode; {args.conversations} conversations,
each with its own system prompt of {args.system_words} words (about 1,000 tokens), {args.turns} turns each,
sent round-robin across the conversations, {args.concurrency} at a time, {args.max_tokens} output tokens per
turn. Together the conversations need more cache than one replica holds. "one replica, cache for all"
is a single replica with a cache for every conversation: the hit rate a single cache reaches.
Power-of-two is Ray Serve's default request router, which in direct mode picks at random (the pick
is made without probing queue lengths). Reproduce: `.venv/bin/python -m loadtests.routing_bench`.

{table}
![routing](routing_cpu.png)
"""
    write_section(ROOT / "docs" / "benchmarks.md", "routing-bench", section)
    plot(rows, ROOT / "docs" / "routing_cpu.png")
    print("[routing] wrote docs/benchmarks.md and docs/routing_cpu.png", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=700)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    started = started_at()
    setups = [
        ("power-of-two", "power-of-two", 2, KV_PER_REPLICA),
        ("prefix-affinity", "prefix-affinity", 2, KV_PER_REPLICA),
        ("session", "session", 2, KV_PER_REPLICA),
        (SINGLE, "prefix-affinity", 1, 4 * KV_PER_REPLICA),
    ]
    rows = [
        measure(label, variant(policy, replicas, kv), policy, replicas, MODEL, args)
        for label, policy, replicas, kv in setups
    ]
    write_report(rows, args, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
