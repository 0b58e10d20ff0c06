"""Does the token path gain from a higher CPU priority than the platform beside it? (issue 28 item 9)

A local run's Ray starts its daemons at nice 0 and every worker at Ray's `worker_niceness`, 15: the
engine replicas, vLLM's processes and HAProxy, but also Serve's controller and the platform's actors.
This serves a catalog in each arrangement in turn, alternating, and streams from one client on the
same machine (as `make bench` does), scraping `/metrics` 3 times a second:

- `ray`: as `slmserve serve` runs (Ray's priorities);
- `token-path-0`: Ray's workers at nice 0 (`RAY_worker_niceness=0`, bare `vllm serve`'s priority),
  then every process off the token path lowered to 10;
- `background-19`: Ray's priorities, then every process off the token path lowered to 19.

    .venv/bin/python -m loadtests.priority --catalog /tmp/test-placed.yaml --modes ray,background-19 --rounds 2

Prints one line per level; the findings are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import psutil

from loadtests.bench import MODEL, scraping
from loadtests.cpu_share import command_of, tree
from loadtests.harness import command_line
from loadtests.workload import percentile, run_level
from services.core.timing import ENGINE_SERIES_PERIOD_S
from testkit.exposition import Exposition
from testkit.serving import serving

# Processes off every model's token path on the direct data plane, by a piece of their command line
# (in routed mode the PlatformIngress carries the tokens: measure direct catalogs only).
BACKGROUND = (
    "ray::ServeController",
    "ray::ProxyActor",
    ":MetricsHub",
    ":PlatformIngress",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "gcs_server",
    "log_monitor.py",
    "dashboard.py",
    "monitor.py",
    "services.cli serve",
)
# mode -> (RAY_worker_niceness for the run, or Ray's own; the niceness BACKGROUND is lowered to, or none)
MODES: dict[str, tuple[str | None, int | None]] = {
    "ray": (None, None),
    "token-path-0": ("0", 10),
    "background-19": (None, 19),
}


def lower_background(root: int, nice: int) -> int:
    """The serve process and every process under it that BACKGROUND names, to `nice`; how many."""
    lowered = 0
    for process in tree(root):
        try:
            if any(marker in command_of(process) for marker in BACKGROUND) and process.nice() < nice:
                process.nice(nice)
                lowered += 1
        except psutil.Error:
            continue
    return lowered


def preemptions(metrics_url: str) -> float:
    """vLLM's preemptions of the measured model so far: a level that preempts measures the KV cache's
    size as much as the arrangement."""
    return Exposition.fetch(metrics_url, timeout_s=10).total("vllm:num_preemptions_total", model_name=MODEL)


def measure(mode: str, catalog: str, levels: list[int]) -> None:
    worker_niceness, nice = MODES[mode]
    if worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = worker_niceness
    try:
        with serving(catalog) as server:
            time.sleep(10)  # past the start's own work
            if nice is not None:
                print(f"[priority] {mode}: {lower_background(server.process.pid, nice)} processes to nice {nice}")
            url = f"{server.base_url}/v1/chat/completions"
            asyncio.run(run_level("warm", url, MODEL, 4, 8, 64, 16))
            metrics_url = f"{server.base_url}/metrics"
            for c in levels:
                preempted = preemptions(metrics_url)
                with scraping(metrics_url, 3):
                    result = asyncio.run(run_level(mode, url, MODEL, c, max(16, 3 * c), 64, 64))
                time.sleep(ENGINE_SERIES_PERIOD_S + 1)  # the engines' series reach /metrics this often
                preempted = preemptions(metrics_url) - preempted
                ms = {q: percentile(result.itl_s, q) * 1000 for q in (50, 95, 99)}
                print(
                    f"[priority] {mode:14} c={c:<3} {result.output_tok_per_s:6.1f} tok/s  "
                    f"TTFT p50 {percentile(result.ttft_s, 50) * 1000:7.0f} ms  ITL p50 {ms[50]:6.1f} "
                    f"p95 {ms[95]:6.1f} p99 {ms[99]:7.1f} ms  errors {result.errors}  preemptions {preempted:.0f}",
                    flush=True,
                )
    finally:
        os.environ.pop("RAY_worker_niceness", None)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--catalog", default="cpu")
    parser.add_argument("--modes", default="ray,token-path-0,background-19")
    parser.add_argument("--levels", default="32,4,32")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}: choose from {sorted(MODES)}")
    for _ in range(args.rounds):
        for mode in modes:
            measure(mode, args.catalog, [int(c) for c in args.levels.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
