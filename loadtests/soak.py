"""`make soak`: locust at and above a model's admission bound for a fixed time (10 minutes by
default) against a local slmserve on 127.0.0.1; 429s are counted apart from errors. Afterwards
nothing may be left in flight and the platform's memory must be back near where it started.
Writes the figures to docs/reliability.md.

The server is started here with the `test` catalog, whose tiny-phimoe admits 4 requests in
flight (cluster-wide), with the same bound on SmolLM2 (the test catalog leaves it unbounded) and one
OpenMP thread per engine (SmolLM2's two threads, sharing 2 cores with two other busy engines, made
every SmolLM2 stream run past the 30 s deadline: a 504 is an error here);
the soak sends --users users (default 12, three times a bound): streaming and plain chats at
tiny-phimoe, and a weighted mix of the catalog's text models (--models). Pass: no error but 429s,
nothing in flight for any model afterwards, platform memory grown under 5%.
"""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
import sys
import time
import urllib.request

import psutil

from loadtests.harness import ROOT, command_line, locust_command, out_dir
from loadtests.sse import parse_model_mix
from services.core.catalog import load_catalog
from services.runtime import wait_until_ready
from testkit.serving import catalog_variant

TEST_CATALOG = ROOT / "tests" / "catalogs" / "test.yaml"  # three model families
MARK_START, MARK_END = "<!-- soak:start -->", "<!-- soak:end -->"
BOUND = 4  # requests in flight per model


def bound_every_model(catalog: dict) -> None:
    for entry in catalog["models"]:
        entry.setdefault("max_in_flight", BOUND)
        # One OpenMP thread per engine: three engines share 2 cores with Ray, the router and locust, and a
        # 2-thread team that cannot get both cores waits at every barrier.
        entry.setdefault("env", {})["OMP_NUM_THREADS"] = "1"


def platform_rss_mib(server_pid: int) -> float:
    """Resident memory of the server and everything it started (Ray, replicas, engines)."""
    try:
        root = psutil.Process(server_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def scrape(host: str, name: str, model: str) -> float:
    with urllib.request.urlopen(f"{host}/metrics", timeout=10) as response:
        text = response.read().decode()
    prefix = f'{name}{{model_name="{model}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--model", default="tiny-phimoe")
    parser.add_argument(
        "--models", default="tiny-phimoe:2,smollm2-135m-instruct:1", help="the mix that MixedModelUser streams"
    )
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args(argv)
    host = f"http://127.0.0.1:{args.port}"
    out = out_dir()
    catalog_path = catalog_variant(str(TEST_CATALOG), bound_every_model)
    server = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--catalog", str(catalog_path), "--port", str(args.port)],
        cwd=ROOT,
        stdout=(out / "soak-server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(host, 900)
        catalog_shape = f"{load_catalog(catalog_path).data_plane} data plane, every model bounded at {BOUND}"
        time.sleep(10)  # let start-up settle before the baseline
        rss_before = platform_rss_mib(server.pid)
        print(
            f"[soak] {args.users} users on {args.model} and {args.models} for {args.minutes:g} min; "
            f"platform RSS {rss_before:.0f} MiB",
            flush=True,
        )
        prefix = out / "soak"
        started = time.monotonic()
        code = subprocess.call(
            [
                *locust_command(host, args.users, args.users, f"{int(args.minutes * 60)}s", prefix),
                "--model",
                args.model,
                "--max-tokens",
                "64",
                "--models",
                args.models,
                "--accept-429",
                "true",
                "StreamingChatUser",
                "ChatUser",
                "MixedModelUser",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        duration = time.monotonic() - started
        time.sleep(15)  # engines drain, metrics snapshots arrive
        with open(f"{prefix}_stats.csv") as handle:
            rows = {row["Name"]: row for row in csv.DictReader(handle)}
        http_rows = [row for name, row in rows.items() if name.startswith("/v1/")]
        requests = sum(int(row["Request Count"]) for row in http_rows)
        errors = sum(int(row["Failure Count"]) for row in http_rows)
        rejected = int(rows.get("429 rejected", {}).get("Request Count", 0))
        models = {args.model} | {name for name, _ in parse_model_mix(args.models)}
        running = sum(
            scrape(host, gauge, model) for model in models for gauge in ("num_requests_running", "num_requests_waiting")
        )
        rss_after = platform_rss_mib(server.pid)
        growth = (rss_after - rss_before) / rss_before
        summary = (
            f"| {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | {args.users} users, "
            f"{duration / 60:.1f} min on {', '.join(sorted(models))} ({catalog_shape}) | {requests} | "
            f"{rejected} | {errors} | {running:.0f} | "
            f"{rss_before:.0f} -> {rss_after:.0f} MiB ({growth:+.1%}) |"
        )
        print(summary)
        _write(summary)
        ok = code in (0, 1) and errors == 0 and running == 0 and growth < 0.05
        print("[soak] PASS" if ok else "[soak] FAIL")
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=120)


def _write(row: str) -> None:
    path = ROOT / "docs" / "reliability.md"
    text = path.read_text()
    header = (
        "| run | load | requests | 429 (admission) | errors | in flight after | platform memory |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    before, _, rest = text.partition(MARK_START)
    earlier = [line for line in rest.partition(MARK_END)[0].splitlines() if line.startswith("| 20")]
    section = f"{MARK_START}\n{header}" + "\n".join([row, *earlier]) + f"\n{MARK_END}"
    path.write_text(before + section + rest.partition(MARK_END)[2])


if __name__ == "__main__":
    sys.exit(main())
