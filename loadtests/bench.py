"""`make bench`: slmserve vs bare vLLM vs Ray Serve LLM, on one machine, one model, one set of
engine arguments, one workload; results to docs/benchmarks.md and docs/benchmark_cpu.png.

Each system runs alone on the machine, as a user runs one of them: a round starts each in turn,
measures every concurrency level on it and stops it; the order alternates over the rounds, so that
drift of the machine hits all of them. (With all three up at once, the idle ones' Ray daemons and
threads took cycles from the measured one.)
While a level runs, a client scrapes that system's metrics three times a second (`--scrape-hz`), as a
busy Prometheus and benchmark clients do.
Each server runs in a session of its own, as one started from its own shell does:
  (a) slmserve, direct mode: `slmserve serve`, HAProxy -> the engine replica's own HTTP server (vLLM
      in-process), its Ray on the core vLLM's CPU worker leaves free
  (b) bare vLLM: `python -m vllm.entrypoints.openai.api_server`
  (c) Ray Serve LLM with direct streaming (`RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1`):
      `ray.serve.llm.build_openai_app` on a Ray and HAProxy of its own (loadtests/ray_serve_llm.py)

Variants (each its own section of docs/benchmarks.md):
  --catalog tests/catalogs/test.yaml --data-plane direct --measured-env default   slmserve serves three
      models behind one URL, measured on SmolLM2 run as `make run` runs it (issue 28's multi-model
      direct plane; docs/benchmarks.md also runs it with the side models on the platform's core)
  --hungry N   N CPU-bound processes beside the client while each level runs (a CPU-hungry client)
  --systems    a subset of the three
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtests import overhead, ray_serve_llm
from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import plot, ratios_table, results_table, write_section
from loadtests.workload import LevelResult, percentile, run_level
from testkit.bare_vllm import serving_bare_vllm, stop
from testkit.serving import catalog_variant, serving

MODEL = "smollm2-135m-instruct"
SYSTEMS = ("slmserve", "bare-vllm", "ray-serve-llm")


@dataclass
class Server:
    chat_url: str
    metrics_url: str


@contextmanager
def alone(system: str, args: argparse.Namespace, catalog_path: Path, model_dir: str) -> Iterator[Server]:
    """`system` started, ready and warmed up; stopped (every process of it) when the block ends."""
    logs = ROOT / "out"
    if system == "slmserve":
        with serving(catalog_path) as server:
            yield _warm(system, Server(f"{server.base_url}/v1/chat/completions", f"{server.base_url}/metrics"), args)
        return
    log = logs / f"bench-{system}.log"
    if system == "bare-vllm":
        port = args.port + 1
        with serving_bare_vllm(model_dir, MODEL, args.engine_args, port, log, args.engine_env):
            base = f"http://127.0.0.1:{port}"
            yield _warm(system, Server(f"{base}/v1/chat/completions", f"{base}/metrics"), args)
        return
    port = args.port + 2  # Ray Serve LLM, on a Ray of its own, as `serve run` would start it
    process = ray_serve_llm.start(
        model_dir, MODEL, args.engine_args, port, log, cpu=True, max_ongoing_requests=args.max_ongoing
    )
    try:
        metrics_url = ray_serve_llm.wait_ready(process, log)
        yield _warm(system, Server(f"http://127.0.0.1:{port}/v1/chat/completions", metrics_url), args)
    finally:
        stop(process)


def _warm(system: str, server: Server, args: argparse.Namespace) -> Server:
    print(f"[bench] {system} ready; warming up", flush=True)
    asyncio.run(run_level(system, server.chat_url, MODEL, 2, 4, args.prompt_words, args.max_tokens))
    return server


@contextmanager
def scraping(url: str, hz: float) -> Iterator[list[float]]:
    """Fetch `url` `hz` times a second until the block ends; yields the scrape durations (s)."""
    durations: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(1 / hz):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                durations.append(time.perf_counter() - started)
            except OSError as error:
                print(f"[bench] scrape of {url} failed: {error}", flush=True)

    thread = threading.Thread(target=loop, daemon=True)
    if hz > 0:
        thread.start()
    try:
        yield durations
    finally:
        stop.set()
        if hz > 0:
            thread.join()


@contextmanager
def hungry(processes: int) -> Iterator[None]:
    """`processes` CPU-bound processes at the client's priority while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def variant(args: argparse.Namespace) -> str:
    """The run's name in docs: the default run, or what differs from it."""
    parts = (
        ([f"{Path(args.catalog).stem}-{args.data_plane or 'catalog'}"] if args.catalog != "cpu" else [])
        + (["bound"] if args.measured_env == "default" else [])
        + ([f"hungry{args.hungry}"] if args.hungry else [])
    )
    return "-".join(parts)


def write_report(results, levels, args, versions: dict, started: str) -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    name = variant(args)
    image = f"benchmark_cpu{'_' + name if name else ''}.png"
    plot(results, levels, args.systems, docs / image)
    title = f" ({name}: catalog {args.catalog}, data plane {args.plane}, {args.hungry} CPU-bound processes beside)"
    names = {"slmserve": "slmserve", "bare-vllm": "bare vLLM", "ray-serve-llm": "Ray Serve LLM"}
    reproduce = f"`.venv/bin/python -m loadtests.bench {args.arguments}`" if args.arguments else "`make bench`"
    environment = f", the same engine environment (`{json.dumps(args.engine_env)}`)" if args.engine_env else ""
    section = f"""## CPU: {" vs ".join(names[system] for system in args.systems)}{title if name else ""}

Run {started} on this machine ({platform.processor() or platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}); {", ".join(f"{k} {v}" for k, v in versions.items())}.
Model: SmolLM2-135M-Instruct (embedded default), the same engine arguments for all three
(`{json.dumps(args.engine_args)}`){environment}. Workload: streamed chat, ~{args.prompt_words}-word prompt,
{args.max_tokens} output tokens (`ignore_eos`), {args.rounds} rounds per level in alternating
order, each system alone on the machine while it is measured, each system's metrics scraped {args.scrape_hz:g}
times a second while it is measured (slmserve `/metrics`, bare vLLM `/metrics`, Ray Serve LLM's
metrics on Ray's metrics agent). slmserve runs its direct data plane, Ray Serve LLM its direct
streaming, each on a Ray of its own behind Ray Serve's HAProxy; each server in a session of its own.
Reproduce: {reproduce}.

{results_table(results, levels, args.systems)}
Ratios (slmserve over the others; tok/s above 1 and TTFT/ITL below 1 favour slmserve):

{ratios_table(results, levels, args.systems)}
Metrics scrape time while measured, p50 / p95 ms: {scrape_summary(args.scrapes)}

slmserve's own time per request (`slmserve_platform_overhead_seconds`; p50 / p95 ms over each level's
rounds: ingress from HAProxy's receipt to the edge's handler, edge from there to the engine call, relay
handing the stream's chunks to the client):

{overhead.table(args.platform_time)}

![throughput, TTFT and ITL p95]({image})
"""
    write_section(docs / "benchmarks.md", f"cpu-bench{'-' + name if name else ''}", section)
    print(f"[bench] wrote docs/benchmarks.md and docs/{image}")


def scrape_summary(scrapes: dict[str, list[float]]) -> str:
    return "; ".join(
        f"{system} {percentile(values, 50) * 1000:.1f} / {percentile(values, 95) * 1000:.1f}"
        for system, values in scrapes.items()
        if values
    )


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: max(6, 2 x concurrency)")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--scrape-hz", type=float, default=3.0, help="metrics scrapes per second while measuring")
    parser.add_argument("--catalog", default="cpu", help="slmserve's catalog (its SmolLM2 model is measured)")
    parser.add_argument("--data-plane", choices=["", "direct", "routed"], default="", help="override the catalog's")
    parser.add_argument(
        "--measured-env",
        choices=["catalog", "default"],
        default="catalog",
        help="default: the measured model's engine without the catalog's env (vLLM binds its worker, as "
        "`make run` and bare vLLM do; the test catalog gives it two unbound threads for CI)",
    )
    parser.add_argument("--hungry", type=int, default=0, help="CPU-bound processes beside the client while measuring")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset of " + ",".join(SYSTEMS))
    args = parser.parse_args(argv)
    args.arguments = " ".join(sys.argv[1:] if argv is None else argv)  # for the report's command
    args.systems = tuple(args.systems.split(","))
    args.scrapes = {system: [] for system in args.systems}
    args.platform_time = {}  # level -> per round, by phase (loadtests/overhead.py)
    levels = [int(c) for c in args.levels.split(",")]

    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings, resolve_catalog_path
    from services.models.embedded import ensure_embedded_model

    path = resolve_catalog_path(args.catalog)
    if args.data_plane or args.measured_env == "default":
        path = catalog_variant(str(path), lambda c: vary(c, args))
    settings = Settings(catalog=str(path))
    catalog = load_catalog(path)
    args.plane = catalog.data_plane
    entry = catalog.resolve(MODEL)
    args.engine_args = dict(entry.engine_args)
    args.engine_env = dict(entry.env)  # the engine environment (OMP threads), bare vLLM gets it too
    args.max_ongoing = entry.deployment.max_ongoing_requests
    model_dir = str(ensure_embedded_model("smollm2-135m-instruct", settings.cache_dir))
    for key, value in runtime.local_environment(settings, catalog).items():
        os.environ.setdefault(key, value)  # every system's environment: offline, no usage stats
    (ROOT / "out").mkdir(exist_ok=True)
    started = started_at()
    print(f"[bench] {', '.join(args.systems)}, each alone: same model, same engine args", flush=True)
    results: dict[tuple[str, int], LevelResult] = {}
    for round_index in range(args.rounds):
        order = args.systems if round_index % 2 == 0 else tuple(reversed(args.systems))
        for system in order:
            with alone(system, args, Path(path), model_dir) as server:
                for c in levels:
                    result = measure(system, server, c, round_index, args)
                    key = (system, c)
                    results[key] = results[key].merged(result) if key in results else result
    import ray
    import vllm

    versions = {"vllm": vllm.__version__, "ray": ray.__version__}
    print(results_table(results, levels, args.systems))
    print(ratios_table(results, levels, args.systems))
    print(f"[bench] scrapes p50 / p95 ms: {scrape_summary(args.scrapes)}")
    write_report(results, levels, args, versions, started)
    return 0


def vary(catalog: dict, args: argparse.Namespace) -> None:
    """The catalog as measured: another data plane, the measured model's engine without its env."""
    if args.data_plane:
        catalog.setdefault("edge", {})["data_plane"] = args.data_plane
    if args.measured_env == "default":
        for model in catalog["models"]:
            if model["name"] == MODEL:
                model.pop("env", None)


def measure(system: str, server: Server, c: int, round_index: int, args: argparse.Namespace) -> LevelResult:
    """One level on one system, scraped while it runs; slmserve's own time per request noted."""
    requests = args.requests_per_level or max(6, 2 * c)
    own_before = overhead.read(server.metrics_url, MODEL) if system == "slmserve" else None
    with scraping(server.metrics_url, args.scrape_hz) as scrapes, hungry(args.hungry):
        result = asyncio.run(run_level(system, server.chat_url, MODEL, c, requests, args.prompt_words, args.max_tokens))
    args.scrapes[system] += scrapes
    if own_before is not None:
        phases = overhead.summary(own_before, overhead.read(server.metrics_url, MODEL))
        args.platform_time.setdefault(c, []).append(phases)
        print(f"[bench] round {round_index + 1} c={c:<3} platform time: {overhead.line(phases)}")
    ttft_ms, itl_ms = percentile(result.ttft_s, 50) * 1000, percentile(result.itl_s, 50) * 1000
    itl95_ms = percentile(result.itl_s, 95) * 1000
    print(
        f"[bench] round {round_index + 1}/{args.rounds} c={c:<3} {system:14} "
        f"{result.output_tok_per_s:7.1f} tok/s  TTFT p50 {ttft_ms:7.1f} ms  ITL p50 {itl_ms:6.2f} ms"
        f"  ITL p95 {itl95_ms:6.2f} ms  errors {result.errors}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
