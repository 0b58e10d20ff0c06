"""Plots of what the GPU runs bring back (drawn here: the GPU machine has no matplotlib).

    .venv/bin/python -m loadtests.gpu.plots bench docs/gpu/gpu_results_run8_direct_h200.json docs/benchmark_gpu.png
    .venv/bin/python -m loadtests.gpu.plots routing docs/routing_gpu.png docs/gpu/gpu_routing_run1_16gib.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtests.report import plot_summary
from loadtests.routing_bench import plot as plot_routing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="throughput, TTFT p50 and ITL p95 against concurrency")
    bench.add_argument("results", type=Path)
    bench.add_argument("png", type=Path)
    routing = commands.add_parser("routing", help="hit rate and TTFT per setup; later files replace a setup")
    routing.add_argument("png", type=Path)
    routing.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "bench":
        run = json.loads(args.results.read_text())
        systems = tuple(dict.fromkeys(key.split("@")[0] for key in run["results"]))
        plot_summary(run["results"], run["levels"], systems, args.png,
                     f"{run['gpu'].split(',')[0]}, {run['shape']} shape, {run['data_plane']} data plane")
    else:
        rows: dict[str, dict] = {}
        for path in args.results:
            rows |= {row["label"]: row for row in json.loads(path.read_text())["rows"]}
        plot_routing(list(rows.values()), args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
