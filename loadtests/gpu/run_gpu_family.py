"""On the GPU machine (issue 15): the whole Phi-3.5 family in one application on one H200
(`loadtests/gpu/phi35-family-h200.yaml`): mini on its automatic profile, MoE in bf16 at TP 1, vision
through the project's offline Phi3V processor; dummy weights. Records each engine's start and GPU
memory, checks image requests by data URL and by http URL from a local allow-listed server (and a
refused metadata-address URL) through the SSRF-guarded path, then runs a mixed-model streamed load
(mini text, MoE text, vision by data URL, vision by URL, in turn) at each concurrency.

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_family --out $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import http.server
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from loadtests.gpu.make_phi35 import build
from loadtests.sse import prompt_words_for
from loadtests.workload import chat_body, level_result, row, run_bodies
from testkit.serving import running_replicas, serving

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-family-h200.yaml"
VISIBLE_TOKENS = {"skip_special_tokens": False}  # dummy weights: see run_gpu_bench.py


def photo_png(width: int = 640, height: int = 480) -> bytes:
    """A real PNG with structure (gradients and a disc), not a flat colour."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_server(png: bytes) -> str:
    """A local HTTP server for the image on 127.0.0.1 (the catalog allow-lists it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/photo.png"


class StartWatch:
    """Seconds from the start to each model's first RUNNING replica, polled from /metrics."""

    def __init__(self, models: list[str]) -> None:
        self.models = models
        self.started = time.monotonic()
        self.ready_s: dict[str, float] = {}
        self._stop = threading.Event()

    def watch(self, base_url: str) -> None:
        def poll() -> None:
            while not self._stop.is_set() and len(self.ready_s) < len(self.models):
                try:
                    for model, running in running_replicas(base_url).items():
                        if running >= 1:
                            self.ready_s.setdefault(model, round(time.monotonic() - self.started, 1))
                except (httpx.HTTPError, ValueError):
                    pass  # not serving /metrics yet
                time.sleep(1)

        threading.Thread(target=poll, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def nvidia_smi(*query: str) -> str:
    """nvidia-smi's answer, or "" where there is none (a CPU dry run of this script)."""
    try:
        return subprocess.run(["nvidia-smi", *query], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return ""


def gpu_memory_by_model(deployments: dict[str, str]) -> dict[str, int]:
    """MiB of GPU memory per model: each GPU process is mapped to its Serve replica by its ancestors."""
    import psutil

    apps = nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    memory: dict[str, int] = {}
    for line in apps.splitlines():
        pid, used = (int(field) for field in line.split(","))
        try:
            chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.NoSuchProcess:
            continue
        command = " ".join(" ".join(process.cmdline()) for process in chain)
        marks = {f"ServeReplica:slmserve:{key} ": name for key, name in deployments.items()}
        model = next((name for mark, name in marks.items() if mark in command + " "), "other")
        memory[model] = memory.get(model, 0) + used
    return memory


def vision_body(model: str, image_url: str, words: int, max_tokens: int) -> dict:
    body = chat_body(words, max_tokens, VISIBLE_TOKENS)
    text = body["messages"][0]["content"]
    body["messages"] = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}],
        }
    ]
    return {"model": model, **body}


def image_checks(base_url: str, model: str, data_url: str, http_url: str) -> dict:
    """One request each: by data URL, by allow-listed http URL, and by a metadata-address URL (refused)."""
    checks = {}
    for label, url in (
        ("data_url", data_url),
        ("http_url", http_url),
        ("metadata_address", "http://169.254.169.254/latest/photo.png"),
    ):
        body = {
            "model": model,
            "max_tokens": 4,
            **VISIBLE_TOKENS,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "Describe the image."},
                    ],
                }
            ],
        }
        response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
        answer = response.json()
        checks[label] = {
            "status": response.status_code,
            "prompt_tokens": answer.get("usage", {}).get("prompt_tokens"),
            "error_code": (answer.get("error") or {}).get("code"),
        }
        print(f"[gpu-family] image by {label}: {checks[label]}", flush=True)
    return checks


def summarize_by_model(results, wall_s: float, labels: list[str], concurrency: int) -> list[dict]:
    """One row per kind of request (run_gpu_lora's row), each kind's tokens over the level's wall time."""
    return [
        row("family", label, level_result(label, concurrency, [s for i, s in results if i == index], wall_s))
        for index, label in enumerate(labels)
    ]


def table(rows: list[dict]) -> str:
    lines = [
        "| c | traffic | req | err | tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['traffic']} | {r['requests']} | {r['errors']} | {r['output_tok_per_s']} | "
        f"{r['ttft_p50_ms']} | {r['ttft_p95_ms']} | {r['itl_p50_ms']} | {r['itl_p95_ms']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument(
        "--catalog",
        type=Path,
        default=CATALOG,
        help="text models and one vision model; sources under /tmp/phi35-SHAPE are built here",
    )
    parser.add_argument("--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 16])
    parser.add_argument("--requests-per-stream", type=int, default=6, help="requests per level = c x this (>= 12)")
    parser.add_argument("--ready-timeout-s", type=float, default=540)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    from services.core.catalog import load_catalog
    from services.core.settings import Settings
    from services.models import resolve_source

    catalog = load_catalog(args.catalog)
    for entry in catalog.models:
        if entry.source.startswith("/tmp/phi35-"):
            build(Path(entry.source), entry.source.removeprefix("/tmp/phi35-"))
    texts = [entry.name for entry in catalog.models if "image" not in entry.modalities]
    vision = next(entry.name for entry in catalog.models if "image" in entry.modalities)
    deployments = {entry.deployment_name: entry.name for entry in catalog.models}
    words = prompt_words_for(Path(resolve_source(catalog.models[0].source, Settings().cache_dir)), args.prompt_tokens)
    png = photo_png()
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    http_url = image_server(png)
    gpu = nvidia_smi("--query-gpu=name,memory.total,driver_version", "--format=csv,noheader") or "no GPU"
    watch = StartWatch(list(deployments.values()))
    with serving(args.catalog, ready_timeout_s=args.ready_timeout_s, on_start=watch.watch) as server:
        ready_s = round(time.monotonic() - watch.started, 1)
        time.sleep(2)
        watch.stop()
        memory = gpu_memory_by_model(deployments)
        metadata = httpx.get(f"{server.base_url}/v1/metadata", timeout=30).json()
        profiles = {info["shortName"]: info.get("profile") for info in metadata.get("modelInfo", [])}
        print(
            f"[gpu-family] ready in {ready_s}s; per model {watch.ready_s}; GPU MiB {memory}; profiles {profiles}",
            flush=True,
        )
        checks = image_checks(server.base_url, vision, data_url, http_url)
        text = chat_body(words, args.max_tokens, VISIBLE_TOKENS)
        bodies = [{"model": name, **text} for name in texts] + [
            vision_body(vision, image, words, args.max_tokens) for image in (data_url, http_url)
        ]
        labels = [f"{name} text" for name in texts] + [f"{vision}, data URL", f"{vision}, http URL"]
        url = f"{server.base_url}/v1/chat/completions"
        asyncio.run(run_bodies(url, [{**b, "max_tokens": 8, "min_tokens": 8} for b in bodies], 4, 8))  # warm
        rows = []
        for concurrency in args.concurrency:
            requests = max(12, concurrency * args.requests_per_stream)
            results, wall = asyncio.run(run_bodies(url, bodies, concurrency, requests))
            level = summarize_by_model(results, wall, labels, concurrency)
            rows += level
            print(
                f"[gpu-family] c={concurrency}: {requests} requests in {wall:.1f}s, "
                f"{sum(r['errors'] for r in level)} errors",
                flush=True,
            )
    text_out = (
        f"Run {began}. {gpu}; three engines on the card (catalog {args.catalog.name}); ready in {ready_s} s, "
        f"first replica RUNNING per model {watch.ready_s} s; GPU memory per model (MiB) {memory}; "
        f"profiles {profiles}. Mixed load: requests cycle through the kinds below; ~{args.prompt_tokens}-"
        f"token text prompts, {args.max_tokens} output tokens (ignore_eos), images 640x480 PNG. "
        f"tok/s per kind is its tokens over the level's whole wall time.\n\nImage checks: {checks}\n\n"
        f"{table(rows)}\n"
    )
    (out / "gpu_family.md").write_text(text_out)
    (out / "gpu_family.json").write_text(
        json.dumps(
            {
                "gpu": gpu,
                "began": began,
                "ready_s": ready_s,
                "model_ready_s": watch.ready_s,
                "gpu_memory_mib": memory,
                "profiles": profiles,
                "image_checks": checks,
                "args": vars(args),
                "rows": rows,
            },
            indent=1,
            default=str,
        )
    )
    print(text_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
