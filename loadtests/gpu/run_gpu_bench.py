"""On the GPU machine: slmserve and bare vLLM's OpenAI server (or Ray Serve LLM with direct streaming,
`--systems slmserve,ray-serve-llm`) on one GPU, same model (Phi-3.5-mini shape, dummy weights), same
engine arguments, same workload (streamed chat, ~128-token prompts, 256 output tokens with
ignore_eos) at concurrency 1, 8, 32 and 64, alternating between the systems.

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_bench --out $OUT
    ... --catalog loadtests/gpu/phi35-moe-dummy.yaml --shape moe --systems slmserve --levels 1,32  # one H200

A catalog of several models (the family, issue 28) is measured on its first model against bare vLLM
of that model, every other dummy model built beside it; `--data-plane` picks slmserve's plane and
`--mixed C` ends with a mixed streamed load over every model (vision by data URL) at concurrency C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from loadtests import overhead, ray_serve_llm
from loadtests.bench import scraping
from loadtests.gpu.make_phi35 import SHAPES, build
from loadtests.report import ratios_table, results_table, summarize
from loadtests.sse import prompt_words_for
from loadtests.workload import LevelResult, percentile, run_level
from testkit.bare_vllm import start_bare_vllm
from testkit.serving import catalog_variant

ROOT = Path(__file__).resolve().parents[2]
# Dummy weights often pick Phi-3's special tokens, which vLLM drops from the text by default: the
# stream would carry empty deltas and no token could be timed. Both systems get the same body.
VISIBLE_TOKENS = {"skip_special_tokens": False}
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-mini-dummy.yaml"


def start_profilers(out: Path, system: str, seconds: int = 8) -> list[subprocess.Popen]:
    """py-spy (raw collapsed stacks, GIL holders) on each Python process of a system's request path."""
    import psutil

    roles = {
        "slmserve": {
            "engine": "ServeReplica:slmserve-",
            "router": ":PlatformIngress",
        },  # a model's application; routed hop
        "bare-vllm": {"api": "vllm.entrypoints.openai.api_server"},
    }[system]
    profilers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        for role, marker in roles.items():
            if marker in command:
                profilers.append(
                    subprocess.Popen(
                        [
                            "py-spy",
                            "record",
                            "--pid",
                            str(process.info["pid"]),
                            "--duration",
                            str(seconds),
                            "--rate",
                            "250",
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--gil",
                            "--output",
                            str(out / f"profile-{system}-{role}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
    return profilers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", default="out")
    parser.add_argument("--catalog", type=Path, default=CATALOG)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mini", help="the dummy model's architecture")
    parser.add_argument("--systems", default="slmserve,bare-vllm")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy", help="slmserve's HTTP ingress")
    parser.add_argument(
        "--scrape-hz",
        type=float,
        default=1.0,
        help="metrics scrapes per second of the system being measured (as in make bench)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the Python processes of slmserve's request path and bare vLLM's API server at the highest level",
    )
    parser.add_argument("--data-plane", choices=["", "direct", "routed"], default="", help="override the catalog's")
    parser.add_argument("--mixed", type=int, default=0, help="then a mixed load over every model at this concurrency")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.levels.split(",")]
    systems = tuple(args.systems.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings

    if args.data_plane:
        args.catalog = catalog_variant(
            str(args.catalog), lambda c: c.setdefault("edge", {}).update(data_plane=args.data_plane)
        )
    catalog = load_catalog(args.catalog)
    entry = catalog.models[0]
    from services.models import resolve_source

    # A CPU dry run may name the test catalog: its models come from slmserve's own sources.
    dummy = entry.source.startswith("/tmp/phi35-")
    model_dir = build(Path(entry.source), args.shape) if dummy else resolve_source(entry.source, Settings().cache_dir)
    for other in catalog.models[1:]:  # the family's other dummy models (their shape is in the path)
        if other.source.startswith("/tmp/phi35-"):
            build(Path(other.source), other.source.removeprefix("/tmp/phi35-"))
    words = prompt_words_for(model_dir, args.prompt_tokens)
    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"[gpu-bench] {gpu}; prompt of {words} words = ~{args.prompt_tokens} tokens", flush=True)
    timings: dict[str, float] = {}
    bare = rayllm = None
    rayllm_log = out / "ray-serve-llm.log"
    try:
        if "ray-serve-llm" in systems:
            started = time.monotonic()
            rayllm = ray_serve_llm.start(model_dir, entry.name, entry.engine_args, 8202, rayllm_log)
            rayllm_metrics = ray_serve_llm.wait_ready(rayllm, rayllm_log)
            timings["ray_serve_llm_start_s"] = time.monotonic() - started
            print(f"[gpu-bench] Ray Serve LLM ready in {timings['ray_serve_llm_start_s']:.1f}s", flush=True)
        if "bare-vllm" in systems:
            started = time.monotonic()
            bare = start_bare_vllm(str(model_dir), entry.name, entry.engine_args, 8201, out / "bare-vllm.log")
            runtime.wait_for_ok("http://127.0.0.1:8201/health", 600)
            timings["bare_vllm_start_s"] = time.monotonic() - started
            print(f"[gpu-bench] bare vLLM ready in {timings['bare_vllm_start_s']:.1f}s", flush=True)
        started = time.monotonic()
        settings = Settings(catalog=str(args.catalog), port=8200, ray_num_cpus=16, ingress=args.ingress)
        runtime.start_local(settings, catalog, wait=False)
        runtime.wait_until_ready("http://127.0.0.1:8200", 600)
        timings["slmserve_start_s"] = time.monotonic() - started
        print(f"[gpu-bench] slmserve ready in {timings['slmserve_start_s']:.1f}s", flush=True)
        urls = {
            "slmserve": "http://127.0.0.1:8200/v1/chat/completions",
            "bare-vllm": "http://127.0.0.1:8201/v1/chat/completions",
            "ray-serve-llm": "http://127.0.0.1:8202/v1/chat/completions",
        }
        metrics_urls = {"slmserve": "http://127.0.0.1:8200/metrics", "bare-vllm": "http://127.0.0.1:8201/metrics"}
        if rayllm is not None:
            metrics_urls["ray-serve-llm"] = rayllm_metrics
        for system in systems:  # warm-up: CUDA graphs, allocator, connection pools
            asyncio.run(run_level(system, urls[system], entry.name, 8, 16, words, 32, VISIBLE_TOKENS))
        results: dict[tuple[str, int], LevelResult] = {}
        platform_time: dict[int, list[dict[str, dict[str, float]]]] = {}  # level -> per round, by phase
        for round_index in range(args.rounds):
            order = systems if round_index % 2 == 0 else tuple(reversed(systems))
            for c in levels:
                for system in order:
                    profiling = (
                        args.profile and round_index == 0 and system in ("slmserve", "bare-vllm") and c == levels[-1]
                    )
                    profilers = start_profilers(out, system) if profiling else []
                    own_before = overhead.read(metrics_urls[system], entry.name) if system == "slmserve" else None
                    with scraping(metrics_urls[system], args.scrape_hz):
                        result = asyncio.run(
                            run_level(
                                system,
                                urls[system],
                                entry.name,
                                c,
                                max(8, 2 * c),
                                words,
                                args.max_tokens,
                                VISIBLE_TOKENS,
                            )
                        )
                    for profiler in profilers:
                        profiler.wait(timeout=60)
                    key = (system, c)
                    results[key] = results[key].merged(result) if key in results else result
                    if own_before is not None:  # the platform's own time per request at this level
                        phases = overhead.summary(own_before, overhead.read(metrics_urls[system], entry.name))
                        platform_time.setdefault(c, []).append(phases)
                        print(f"[gpu-bench] round {round_index + 1} c={c:<3} platform time: {overhead.line(phases)}")
                    print(
                        f"[gpu-bench] round {round_index + 1} c={c:<3} {system:10} {result.output_tok_per_s:8.1f} "
                        f"tok/s TTFT p50 {percentile(result.ttft_s, 50) * 1000:7.1f} ms ITL p50 "
                        f"{percentile(result.itl_s, 50) * 1000:6.2f} ms ITL p95 "
                        f"{percentile(result.itl_s, 95) * 1000:6.2f} ms errors {result.errors}",
                        flush=True,
                    )
        table = results_table(results, levels, systems)
        ratios = ratios_table(results, levels, systems) if len(systems) > 1 else ""
        print(table)
        print(ratios)
        import ray
        import vllm

        starts = ", ".join(f"{name.removesuffix('_start_s')} {seconds:.1f}s" for name, seconds in timings.items())
        (out / "gpu_results.md").write_text(
            f"GPU: {gpu}; vllm {vllm.__version__}; ray {ray.__version__}; Python {sys.version.split()[0]}\n"
            f"model: {args.shape} shape, catalog {args.catalog.name}; slmserve ingress: {args.ingress}, "
            f"data plane: {catalog.data_plane}; metrics scraped {args.scrape_hz:g}/s while measuring\n"
            f"engine start: {starts} (cold, CUDA graphs + torch.compile)\n\n{table}\n{ratios}\n"
            f"slmserve's own time per request (p50 / p95 ms, mean over rounds):\n\n{overhead.table(platform_time)}"
        )
        (out / "gpu_results.json").write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "shape": args.shape,
                    "ingress": args.ingress,
                    "data_plane": catalog.data_plane,
                    "scrape_hz": args.scrape_hz,
                    "timings": timings,
                    "levels": levels,
                    "prompt_words": words,
                    "results": summarize(results),
                    "platform_time": platform_time,
                },
                indent=1,
            )
        )
        if args.mixed:  # after the comparison is on disk
            mixed = mixed_load(catalog, "http://127.0.0.1:8200", words, args.max_tokens, args.mixed)
            (out / "gpu_mixed.md").write_text(f"Mixed load over every model, c={args.mixed}:\n\n{mixed_table(mixed)}\n")
            (out / "gpu_mixed.json").write_text(json.dumps(mixed, indent=1))
    finally:
        for server in (bare, rayllm):
            if server is not None:
                server.terminate()
        runtime.shutdown()
    return 0


def mixed_load(catalog, base_url: str, words: int, max_tokens: int, concurrency: int) -> list[dict]:
    """Streamed requests cycling over every model (a vision model's with an image by data URL)."""
    import base64

    from loadtests.gpu.run_gpu_family import photo_png, summarize_by_model, vision_body
    from loadtests.workload import chat_body, run_bodies

    data_url = "data:image/png;base64," + base64.b64encode(photo_png()).decode()
    bodies = [
        vision_body(model.name, data_url, words, max_tokens)
        if "image" in model.modalities
        else {"model": model.name, **chat_body(words, max_tokens, VISIBLE_TOKENS)}
        for model in catalog.models
    ]
    url = f"{base_url}/v1/chat/completions"
    results, wall = asyncio.run(run_bodies(url, bodies, concurrency, max(12, 6 * concurrency)))
    rows = summarize_by_model(results, wall, [model.name for model in catalog.models], concurrency)
    print(f"[gpu-bench] mixed c={concurrency}: {sum(row['errors'] for row in rows)} errors; {rows}", flush=True)
    return rows


def mixed_table(rows: list[dict]) -> str:
    from loadtests.gpu.run_gpu_family import table

    return table(rows)


def _exited(process: subprocess.Popen, log: Path) -> str:
    """Why a server process ended before it was ready ("" while it runs)."""
    return "" if process.poll() is None else f"exited with {process.returncode}: {log.read_text()[-3000:]}"


if __name__ == "__main__":
    sys.exit(main())
