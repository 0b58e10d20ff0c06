"""`make bench`: slmserve vs bare vLLM vs Ray Serve LLM, on one machine, one model, one set of
engine arguments, one workload; results to docs/benchmarks.md and docs/benchmark_cpu.png.

All three run at once for the whole benchmark; each concurrency level is measured on each system
in turn, in alternating order over the rounds, so that drift of the machine hits all of them.
While a level runs, a client scrapes that system's metrics three times a second (`--scrape-hz`), as a
busy Prometheus and benchmark clients do.
Each server runs in a session of its own, as one started from its own shell does:
  (a) slmserve, direct mode: HAProxy -> the engine replica's own HTTP server (vLLM in-process), on a
      Ray head of its own that keeps to the core vLLM's CPU worker leaves free, as `slmserve serve`'s
  (b) bare vLLM: `python -m vllm.entrypoints.openai.api_server`
  (c) Ray Serve LLM with direct streaming (`RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1`):
      `ray.serve.llm.build_openai_app` on a Ray and HAProxy of its own (loadtests/ray_serve_llm.py)

Variants (each its own section of docs/benchmarks.md):
  --catalog tests/catalogs/test.yaml --data-plane direct   slmserve serves three models behind one
      URL, measured on SmolLM2 (issue 28's multi-model direct plane)
  --hungry N   N CPU-bound processes beside the client while each level runs (a CPU-hungry client)
  --systems    a subset of the three
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from loadtests import overhead, ray_serve_llm
from loadtests.harness import ROOT, command_line, started_at
from loadtests.ray_head import stop_ray_head
from loadtests.report import plot, ratios_table, results_table, write_section
from loadtests.workload import LevelResult, percentile, run_level
from testkit.bare_vllm import start_bare_vllm
from testkit.serving import catalog_variant

MODEL = "smollm2-135m-instruct"
SYSTEMS = ("slmserve", "bare-vllm", "ray-serve-llm")


def _engine_args(catalog) -> dict:
    return dict(catalog.resolve(MODEL).engine_args)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def ray_of_its_own(settings: Any, catalog: Any, log: Path) -> Iterator[Any]:
    """A local Ray head (`ray start --block`) in a session of its own, and the settings that join it.
    slmserve then runs apart from this client, as bare vLLM and Ray Serve LLM do
    (testkit/bare_vllm.py) and as `slmserve serve` started from its own shell does: Linux shares the
    CPU between sessions (autogroup) before it weighs their processes, and a Ray started by this
    process would put its nice-15 workers in the client's session, behind the client and the
    CPU-hungry processes (`--hungry`) at nice 0."""
    from services import runtime

    runtime.prepare_environment(settings, catalog)  # the switches the head's workers inherit
    # Token authentication, with this head's own token (not the user's ~/.ray one): the head and this
    # process's driver both read it from the environment (as loadtests/autoscaling_cluster.py does).
    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = runtime.free_ports(1)[0]
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={runtime.local_ray_cpus(settings, catalog)}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    with runtime.platform_cores(catalog):  # as `slmserve serve` starts its Ray (services/engine/cpu_affinity.py)
        head = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`ray start --head` did not come up (see {log})")
            time.sleep(0.5)
        yield settings.model_copy(update={"ray_address": address})
    finally:
        stop_ray_head(head, address)


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
    parts = ([f"{Path(args.catalog).stem}-{args.data_plane or 'catalog'}"] if args.catalog != "cpu" else []) + (
        [f"hungry{args.hungry}"] if args.hungry else []
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
    section = f"""## CPU: {" vs ".join(names[system] for system in args.systems)}{title if name else ""}

Run {started} on this machine ({platform.processor() or platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}); {", ".join(f"{k} {v}" for k, v in versions.items())}.
Model: SmolLM2-135M-Instruct (embedded default), the same engine arguments for all three
(`{json.dumps(args.engine_args)}`). Workload: streamed chat, ~{args.prompt_words}-word prompt,
{args.max_tokens} output tokens (`ignore_eos`), {args.rounds} rounds per level in alternating
order, all three servers up for the whole run, each system's metrics scraped {args.scrape_hz:g}
times a second while it is measured (slmserve `/metrics`, bare vLLM `/metrics`, Ray Serve LLM's
metrics on Ray's metrics agent). slmserve runs its direct data plane, Ray Serve LLM its direct
streaming, each on a Ray of its own behind Ray Serve's HAProxy; each server in a session of its own.
Reproduce: `make bench` (or
`.venv/bin/python -m loadtests.bench`).

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
    parser.add_argument("--hungry", type=int, default=0, help="CPU-bound processes beside the client while measuring")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset of " + ",".join(SYSTEMS))
    args = parser.parse_args(argv)
    args.systems = tuple(args.systems.split(","))
    args.scrapes = {system: [] for system in args.systems}
    args.platform_time = {}  # level -> per round, by phase (loadtests/overhead.py)
    levels = [int(c) for c in args.levels.split(",")]

    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings, resolve_catalog_path
    from services.models.embedded import ensure_embedded_model

    path = resolve_catalog_path(args.catalog)
    if args.data_plane:
        plane = args.data_plane
        path = catalog_variant(str(path), lambda c: c.setdefault("edge", {}).update(data_plane=plane))
    settings = Settings(catalog=str(path), port=args.port, ray_num_cpus=8)
    catalog = load_catalog(path)
    args.plane = catalog.data_plane
    args.engine_args = _engine_args(catalog)
    model_dir = str(ensure_embedded_model("smollm2-135m-instruct", settings.cache_dir))
    for key, value in runtime.local_environment(settings, catalog).items():
        os.environ.setdefault(key, value)
    logs = ROOT / "out"
    logs.mkdir(exist_ok=True)
    bare_port = args.port + 1
    started = started_at()
    print("[bench] starting slmserve, bare vLLM and Ray Serve LLM (same model, same engine args)", flush=True)
    with ExitStack() as cleanup:  # undone in reverse, each step even where an earlier one fails
        bare = start_bare_vllm(model_dir, MODEL, args.engine_args, bare_port, logs / "bench-bare-vllm.log")
        cleanup.callback(_stop, bare)
        rayllm_port, rayllm_log = args.port + 2, logs / "bench-ray-serve-llm.log"
        if "ray-serve-llm" in args.systems:  # on a Ray of its own, as `serve run` would start it
            max_ongoing = catalog.resolve(MODEL).deployment.max_ongoing_requests
            rayllm = ray_serve_llm.start(
                model_dir, MODEL, args.engine_args, rayllm_port, rayllm_log, cpu=True, max_ongoing_requests=max_ongoing
            )
            cleanup.callback(_stop, rayllm)
        ray_settings = cleanup.enter_context(ray_of_its_own(settings, catalog, logs / "bench-ray-head.log"))
        cleanup.callback(runtime.shutdown)
        runtime.start_local(ray_settings, catalog, wait=False)
        base = f"http://127.0.0.1:{args.port}"
        urls = {
            "slmserve": f"{base}/v1/chat/completions",
            "bare-vllm": f"http://127.0.0.1:{bare_port}/v1/chat/completions",
            "ray-serve-llm": f"http://127.0.0.1:{rayllm_port}/v1/chat/completions",
        }
        runtime.wait_until_ready(base, 900)
        runtime.wait_for_ok(f"http://127.0.0.1:{bare_port}/health", 900)
        rayllm_metrics = ray_serve_llm.wait_ready(rayllm, rayllm_log) if "ray-serve-llm" in args.systems else ""

        metrics_urls = {
            "slmserve": f"{base}/metrics",
            "bare-vllm": f"http://127.0.0.1:{bare_port}/metrics",
            "ray-serve-llm": rayllm_metrics,
        }
        print(f"[bench] {', '.join(args.systems)} ready; warming up", flush=True)
        for system in args.systems:
            asyncio.run(run_level(system, urls[system], MODEL, 2, 4, args.prompt_words, args.max_tokens))
        results: dict[tuple[str, int], LevelResult] = {}
        for round_index in range(args.rounds):
            order = args.systems if round_index % 2 == 0 else tuple(reversed(args.systems))
            for c in levels:
                requests = args.requests_per_level or max(6, 2 * c)
                for system in order:
                    own_before = overhead.read(metrics_urls[system], MODEL) if system == "slmserve" else None
                    with scraping(metrics_urls[system], args.scrape_hz) as scrapes, hungry(args.hungry):
                        result = asyncio.run(
                            run_level(system, urls[system], MODEL, c, requests, args.prompt_words, args.max_tokens)
                        )
                    args.scrapes[system] += scrapes
                    if own_before is not None:  # the platform's own time per request at this level
                        phases = overhead.summary(own_before, overhead.read(metrics_urls[system], MODEL))
                        args.platform_time.setdefault(c, []).append(phases)
                        print(f"[bench] round {round_index + 1} c={c:<3} platform time: {overhead.line(phases)}")
                    key = (system, c)
                    results[key] = results[key].merged(result) if key in results else result
                    ttft_ms, itl_ms = percentile(result.ttft_s, 50) * 1000, percentile(result.itl_s, 50) * 1000
                    itl95_ms = percentile(result.itl_s, 95) * 1000
                    print(
                        f"[bench] round {round_index + 1}/{args.rounds} c={c:<3} {system:14} "
                        f"{result.output_tok_per_s:7.1f} tok/s  TTFT p50 {ttft_ms:7.1f} ms  ITL p50 {itl_ms:6.2f} ms"
                        f"  ITL p95 {itl95_ms:6.2f} ms  errors {result.errors}",
                        flush=True,
                    )
        import ray
        import vllm

        versions = {"vllm": vllm.__version__, "ray": ray.__version__}
        print(results_table(results, levels, args.systems))
        print(ratios_table(results, levels, args.systems))
        print(f"[bench] scrapes p50 / p95 ms: {scrape_summary(args.scrapes)}")
        write_report(results, levels, args, versions, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
