"""Plots of what the GPU runs bring back (drawn here: the GPU machine has no matplotlib).

.venv/bin/python -m loadtests.gpu.plots bench docs/gpu/gpu_results_run8_direct_h200.json docs/benchmark_gpu.png
.venv/bin/python -m loadtests.gpu.plots routing docs/routing_gpu.png docs/gpu/gpu_routing_run1_16gib.json
.venv/bin/python -m loadtests.gpu.plots lora docs/gpu/gpu_lora_run1_h200.json docs/lora_gpu.png
.venv/bin/python -m loadtests.gpu.plots sleep docs/gpu/gpu_sleep_run1_h100.json docs/scale_to_zero_gpu.png
.venv/bin/python -m loadtests.gpu.plots share docs/gpu/gpu_share_run2_h100.json docs/gpu_share.png
.venv/bin/python -m loadtests.gpu.plots coldstart docs/gpu/gpu_coldstart_bare_run1_h100.json \
    docs/gpu/gpu_coldstart_slmserve_run1_h100.json docs/coldstart_gpu.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from loadtests.report import plot_summary
from loadtests.routing_bench import plot as plot_routing


def plot_lora(run: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["rows"]
    labels = {
        ("no-lora", "base"): "LoRA off, base",
        ("lora", "base"): "LoRA on, base",
        ("lora", "4 adapters"): "LoRA on, 4 adapters",
    }
    levels = sorted({row["concurrency"] for row in rows})
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    metrics = [("output_tok_per_s", "output tok/s"), ("ttft_p50_ms", "TTFT p50 (ms)"), ("itl_p95_ms", "ITL p95 (ms)")]
    width = 0.8 / len(labels)
    for axis, (key, title) in zip(axes, metrics, strict=True):
        for offset, (setup, label) in enumerate(labels.items()):
            values = [
                next((r[key] for r in rows if (r["setup"], r["traffic"]) == setup and r["concurrency"] == c), 0)
                for c in levels
            ]
            axis.bar([i + offset * width for i in range(len(levels))], values, width, label=label)
        axis.set_xticks([i + width for i in range(len(levels))], [f"c={c}" for c in levels])
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{run['gpu'].split(',')[0]}: Phi-3.5-mini shape, four rank-16 LoRA adapters (slmserve)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


def plot_sleep(run: dict, png: Path) -> None:
    """Each wake's first token beside a warm request's and the neighbour model's, and the card's memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wakes = [s * 1000 for s in run["wake_ttft_s_each"]]
    warm = [s * 1000 for s in run["warm_ttft_s_each"]]
    figure, (ttft, memory) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    numbers = range(1, len(wakes) + 1)
    ttft.bar(numbers, wakes, color="tab:orange", label="first request after a sleep (wake + first token)")
    ttft.plot(numbers, warm, "o-", color="tab:blue", label="the next request (awake)")
    neighbour = run["neighbour_ttft_s"]
    during = neighbour["during_wakes_p50"] * 1000
    ttft.axhline(during, color="tab:green", ls="--", label="other model during wakes, p50")
    ttft.axhline(500, color="tab:red", ls=":", label="target: 500 ms at p95")
    ttft.set(xlabel="wake", ylabel="time to first token (ms)", ylim=(0, 640), xticks=list(numbers))
    ttft.legend(loc="upper left", ncol=2, fontsize=8)
    asleep, awake = run["card_mib_asleep_then_awake"][0]
    memory.bar(["a asleep", "a awake"], [asleep / 1024, awake / 1024], color=["tab:gray", "tab:orange"])
    memory.set(ylabel="card memory used (GiB, both models)")
    figure.suptitle(f"{run['gpu']}: two Phi-3.5-mini-shaped models on one card, model a sleeps when idle (slmserve)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


def plot_share(run: dict, png: Path) -> None:
    """Each burst's first token (another model put to sleep, then this one's wake) and the card's memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bursts = run["bursts"]
    colours = {"a": "tab:orange", "b": "tab:purple", "c": "tab:cyan"}
    figure, (ttft, memory) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    numbers = range(1, len(bursts) + 1)
    ttft.bar(numbers, [b["first_ttft_s"] * 1000 for b in bursts], color=[colours[b["model"]] for b in bursts])
    ttft.plot(numbers, [statistics.median(b["rest_ttft_s"]) * 1000 for b in bursts], "o-", color="tab:blue")
    ttft.axhline(500, color="tab:red", ls=":")
    ttft.set(xlabel="burst (model a, b, c in turn)", ylabel="time to first token (ms)", ylim=(0, 800))
    ttft.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        + [plt.Line2D([], [], color="tab:blue", marker="o"), plt.Line2D([], [], color="tab:red", ls=":")],
        labels=[f"first request to {m} (another sleeps, {m} wakes)" for m in colours]
        + ["the burst's next requests (awake), p50", "500 ms"],
        loc="upper left",
        ncol=2,
        fontsize=8,
    )
    card = run["card_mib"] / 1024
    memory.bar(["card", "used, max"], [card, run["card_mib_max"] / 1024], color=["tab:gray", "tab:orange"])
    memory.set(ylabel="GiB", title="3 models x 0.42 of the card", ylim=(0, card * 1.3))
    figure.suptitle(f"{run['gpu']}: three Phi-3.5-mini-shaped models on one card, two fit awake (slmserve)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


def plot_coldstart(bare: dict, slmserve: dict, png: Path) -> None:
    """Each start's seconds to its first token, split into the phases both systems report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"bare vLLM\n{s['caches']}", s, None) for s in bare["bare_vllm"]]
    bars += [(f"slmserve from zero\n{s['caches']}", s, s) for s in slmserve["slmserve_from_zero"]]
    bars.sort(key=lambda bar: (bar[1]["caches"], bar[2] is not None))
    phases = {  # name, colour, seconds of a start
        "replica process (Ray worker, imports)": ("tab:purple", lambda s, own: own["replica_process_s"] if own else 0),
        "vLLM before its engine init (API server or engine client, engine process, weights)": (
            "tab:gray",
            lambda s, own: (own["vllm_engine_s"] if own else s["ready_s"]) - s["engine_init_s"],
        ),
        "vLLM's engine init (torch.compile, profiling, KV cache, CUDA graphs)": (
            "tab:blue",
            lambda s, own: s["engine_init_s"],
        ),
        "Serve's decision and placement, the first token": (
            "tab:green",
            lambda s, own: own["serve_decision_and_placement_s"] if own else s["first_token_s"] - s["ready_s"],
        ),
    }
    figure, axes = plt.subplots(figsize=(11, 4.8))
    bottoms = [0.0] * len(bars)
    for name, (colour, seconds) in phases.items():
        heights = [seconds(start, own) for _, start, own in bars]
        axes.bar(range(len(bars)), heights, bottom=bottoms, color=colour, label=name)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, (_, start, _) in enumerate(bars):
        axes.text(x, start["first_token_s"] + 1, f"{start['first_token_s']:.0f} s", ha="center", fontsize=8)
    axes.set_xticks(range(len(bars)), [label for label, _, _ in bars], fontsize=8)
    axes.set(ylabel="seconds to the first token", ylim=(0, max(bottoms) * 1.45))
    axes.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"{bare['gpu']}: a Phi-3.5-mini-shaped replica's start, compile caches empty (cold) or kept (warm)")
    figure.tight_layout()
    figure.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="throughput, TTFT p50 and ITL p95 against concurrency")
    bench.add_argument("results", type=Path)
    bench.add_argument("png", type=Path)
    routing = commands.add_parser("routing", help="hit rate and TTFT per setup; later files replace a setup")
    routing.add_argument("png", type=Path)
    routing.add_argument("results", type=Path, nargs="+")
    lora = commands.add_parser("lora", help="tok/s, TTFT p50 and ITL p95 of base and adapter traffic")
    lora.add_argument("results", type=Path)
    lora.add_argument("png", type=Path)
    sleep = commands.add_parser("sleep", help="each wake's TTFT, the neighbour's, the card's memory")
    sleep.add_argument("results", type=Path)
    sleep.add_argument("png", type=Path)
    share = commands.add_parser("share", help="three models on one card: each burst's first token, the card")
    share.add_argument("results", type=Path)
    share.add_argument("png", type=Path)
    coldstart = commands.add_parser("coldstart", help="bare vLLM's starts and slmserve's from zero, by phase")
    coldstart.add_argument("bare", type=Path)
    coldstart.add_argument("slmserve", type=Path)
    coldstart.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    if args.command == "coldstart":
        plot_coldstart(json.loads(args.bare.read_text()), json.loads(args.slmserve.read_text()), args.png)
    elif args.command == "share":
        plot_share(json.loads(args.results.read_text()), args.png)
    elif args.command == "sleep":
        plot_sleep(json.loads(args.results.read_text()), args.png)
    elif args.command == "lora":
        plot_lora(json.loads(args.results.read_text()), args.png)
    elif args.command == "bench":
        run = json.loads(args.results.read_text())
        systems = tuple(dict.fromkeys(key.split("@")[0] for key in run["results"]))
        plot_summary(
            run["results"],
            run["levels"],
            systems,
            args.png,
            f"{run['gpu'].split(',')[0]}, {run['shape']} shape, {run['data_plane']} data plane",
        )
    else:
        rows: dict[str, dict] = {}
        for path in args.results:
            rows |= {row["label"]: row for row in json.loads(path.read_text())["rows"]}
        plot_routing(list(rows.values()), args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
