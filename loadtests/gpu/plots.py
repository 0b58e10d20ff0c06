"""Plots of what the GPU runs bring back (drawn here: the GPU machine has no matplotlib).

.venv/bin/python -m loadtests.gpu.plots bench docs/gpu/gpu_results_run8_direct_h200.json docs/benchmark_gpu.png
.venv/bin/python -m loadtests.gpu.plots routing docs/routing_gpu.png docs/gpu/gpu_routing_run1_16gib.json
.venv/bin/python -m loadtests.gpu.plots lora docs/gpu/gpu_lora_run1_h200.json docs/lora_gpu.png
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args(argv)
    if args.command == "lora":
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
