"""On the GPU machine (issue 29, item 6): a replica's cold start phase by phase, and scale from zero to
the first token, against bare vLLM's start on the same card.

- `--part bare`: `vllm serve` of the Phi-3.5-mini shape from launch to its first streamed token, twice
  with empty compile caches (cold) and twice with the caches the cold start left (warm).
- `--part slmserve`: `slmserve serve` of the same model at `min_replicas: 0`; the first request from
  zero is held while Serve starts a replica, cold caches first, then warm ones (the model goes back
  to zero between requests); `--rounds` of each.

Each start's phases come from vLLM's own log lines (weights, torch.compile, CUDA graphs, the engine's
init) and from the engine replica's ready line (the replica process before the constructor, model
files, the vLLM engine). The compile caches live under VLLM_CACHE_ROOT, which the chart puts on the
model cache volume that every node mounts (values `modelCache`), so a replica's warm start is what a
second replica anywhere in the cluster gets.

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_coldstart --part bare --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from loadtests.gpu.make_phi35 import build
from loadtests.gpu.run_gpu_sleep import ttft
from testkit.bare_vllm import start_bare_vllm
from testkit.idle_models import at_zero
from testkit.serving import catalog_variant, running_replicas, serving, until

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-mini-dummy.yaml"
MODEL_DIR = Path("/tmp/phi35-mini")
CACHES = {"bare": Path("/tmp/coldstart-cache/bare"), "slmserve": Path("/tmp/coldstart-cache/slmserve")}
HOLD_S = 600
TO_ZERO_S = 5

# vLLM's own figures for the phases of an engine's start (the first number of the matching line).
VLLM_PHASES = {
    "weights_s": r"Loading weights took ([\d.]+) s",
    "model_load_s": r"Model loading took [\d.]+ ?GiB(?: memory)? and ([\d.]+) s",
    "dynamo_s": r"Dynamo bytecode transform time: ([\d.]+) s",
    "compile_s": r"torch\.compile (?:takes|took) ([\d.]+) s in total",
    "compile_cached_load_s": r"from the cache, took ([\d.]+) s",
    "cuda_graphs_s": r"Graph capturing finished in ([\d.]+) sec",
    "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
}
READY_LINE = re.compile(
    r"engine for \S+ ready in ([\d.]+)s \(process up ([\d.]+)s before; model files ([\d.]+)s, vLLM engine ([\d.]+)s\)"
)


def vllm_phases(log: str) -> dict[str, float]:
    phases = {}
    for name, pattern in VLLM_PHASES.items():
        found = re.findall(pattern, log)
        if found:
            phases[name] = float(found[-1])
    return phases


def clear_caches(system: str) -> None:
    shutil.rmtree(CACHES[system], ignore_errors=True)
    shutil.rmtree(f"/tmp/torchinductor_{os.environ.get('USER', 'root')}", ignore_errors=True)
    CACHES[system].mkdir(parents=True)


def bare_start(engine_args: dict, out: Path, label: str) -> dict:
    log = out / f"bare-{label}.log"
    started = time.monotonic()
    process = start_bare_vllm(str(MODEL_DIR), "phi-3.5-mini", engine_args, 8201, log)
    try:
        with httpx.Client(base_url="http://127.0.0.1:8201", timeout=120) as http:
            while until(lambda: http.get("/health", timeout=2).status_code == 200, 1, 0.1) is None:
                if process.poll() is not None or time.monotonic() - started > 900:
                    raise RuntimeError(f"bare vLLM did not start: {log.read_text()[-3000:]}")
            ready_s = time.monotonic() - started
            _, first, ok = ttft(http, "phi-3.5-mini", "the first question")
    finally:
        process.terminate()
        process.wait(60)
    result = {"ready_s": ready_s, "first_token_s": ready_s + first, "ok": ok, **vllm_phases(log.read_text())}
    print(f"[coldstart] bare vLLM {label}: {json.dumps(result)}", flush=True)
    return result


def bare_part(out: Path, rounds: int) -> dict:
    engine_args = load_entry()["engine_args"]
    os.environ["VLLM_CACHE_ROOT"] = str(CACHES["bare"])
    starts = []
    for n in range(rounds):
        clear_caches("bare")
        starts.append({"caches": "cold", **bare_start(engine_args, out, f"cold{n}")})
        starts.append({"caches": "warm", **bare_start(engine_args, out, f"warm{n}")})
    return {"bare_vllm": starts}


def load_entry() -> dict:
    import yaml

    return yaml.safe_load(CATALOG.read_text())["models"][0]


def slmserve_part(out: Path, rounds: int) -> dict:
    def to_zero(catalog: dict) -> None:
        catalog["models"] = [at_zero(catalog["models"][0], "phi-3.5-mini", HOLD_S, TO_ZERO_S)]

    os.environ["VLLM_CACHE_ROOT"] = str(CACHES["slmserve"])
    clear_caches("slmserve")
    starts = []
    launched = time.monotonic()
    with serving(catalog_variant(str(CATALOG), to_zero), ready_timeout_s=600) as server:
        platform_ready_s = time.monotonic() - launched
        print(f"[coldstart] slmserve ready with the model at zero in {platform_ready_s:.1f}s", flush=True)
        with httpx.Client(base_url=server.base_url, timeout=HOLD_S + 60) as http:
            for n in range(2 * rounds):
                caches = "cold" if n % 2 == 0 else "warm"
                if until(lambda: running_replicas(server.base_url).get("phi-3.5-mini", 0) == 0, 300) is None:
                    raise RuntimeError("the model did not go back to zero replicas")
                if caches == "cold":
                    clear_caches("slmserve")
                offset = len(server.log.read_text())
                _, first, ok = ttft(http, "phi-3.5-mini", f"from zero {n}")
                time.sleep(1)  # the replica's lines reach the driver's output through Ray's log monitor
                log = server.log.read_text()[offset:]
                ready = READY_LINE.findall(log)
                phases = vllm_phases(log)
                if ready:
                    constructor, process, files, engine = map(float, ready[-1])
                    phases |= {
                        "replica_process_s": process,
                        "model_files_s": files,
                        "vllm_engine_s": engine,
                        "constructor_s": constructor,
                        "serve_decision_and_placement_s": first - process - constructor,
                    }
                starts.append({"caches": caches, "first_token_s": first, "ok": ok, **phases})
                print(f"[coldstart] slmserve from zero, {caches}: {json.dumps(starts[-1])}", flush=True)
        shutil.copy(server.log, out / "slmserve.log")
    return {"slmserve_platform_ready_s": platform_ready_s, "slmserve_from_zero": starts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--part", choices=["bare", "slmserve"], required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    build(MODEL_DIR, "mini")
    part = bare_part if args.part == "bare" else slmserve_part
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    results = {"started": started_at, "gpu": gpu.stdout.strip(), **part(out, args.rounds)}
    (out / f"gpu_coldstart_{args.part}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
