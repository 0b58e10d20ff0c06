"""On the GPU machine (issue 14): what serving LoRA adapters costs. One Phi-3.5-mini-shaped replica
with four rank-16 adapters: base-only traffic, then traffic spread over the four adapters (request i
asks for adapter i mod 4, so every batch mixes them), at each concurrency; then base traffic on the
same engine with LoRA off. Streamed chat, fixed prompt and output lengths.

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_lora --out $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import subprocess
import sys
from pathlib import Path

from loadtests.gpu.make_phi35 import build, build_adapters
from loadtests.gpu.run_gpu_routing import wait_for_free_gpu
from loadtests.sse import prompt_words_for
from loadtests.workload import row, run_level
from testkit.serving import catalog_variant, serving

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-mini-lora.yaml"
ADAPTERS = ["sql", "support", "legal", "medical"]
MODEL = "phi-3.5-mini"
VISIBLE_TOKENS = {"skip_special_tokens": False}  # dummy weights: see run_gpu_bench.py


def table(rows: list[dict]) -> str:
    base = {(r["concurrency"]): r for r in rows if r["setup"] == "lora" and r["traffic"] == "base"}
    lines = [
        "| engine | traffic | c | req | err | tok/s | vs base traffic | TTFT p50 ms | TTFT p95 ms | ITL p50 ms "
        "| ITL p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base.get(r["concurrency"])
        ratio = f"{r['output_tok_per_s'] / ref['output_tok_per_s']:.3f}x" if ref else ""
        engine = "LoRA on (4 adapters)" if r["setup"] == "lora" else "LoRA off"
        lines.append(
            f"| {engine} | {r['traffic']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{r['output_tok_per_s']} | {ratio} | {r['ttft_p50_ms']} | {r['ttft_p95_ms']} | "
            f"{r['itl_p50_ms']} | {r['itl_p95_ms']} |"
        )
    return "\n".join(lines)


def measure(setup: str, catalog: Path, traffics: dict[str, list[str]], args: argparse.Namespace) -> list[dict]:
    rows = []
    with serving(catalog, ready_timeout_s=900) as server:
        url = f"{server.base_url}/v1/chat/completions"
        for concurrency in args.concurrency:
            requests = max(args.min_requests, concurrency * args.rounds)
            for traffic, models in traffics.items():
                asyncio.run(
                    run_level(setup, url, models, concurrency, concurrency, args.prompt_words, 8, VISIBLE_TOKENS)
                )  # warm: each adapter loaded, graphs captured
                result = asyncio.run(
                    run_level(
                        setup, url, models, concurrency, requests, args.prompt_words, args.max_tokens, VISIBLE_TOKENS
                    )
                )
                rows.append(row(setup, traffic, result))
                print(f"[gpu-lora] {setup} {traffic} c={concurrency}: {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 32])
    parser.add_argument("--rounds", type=int, default=8, help="requests per level = concurrency x rounds")
    parser.add_argument("--min-requests", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model_dir = build(Path("/tmp/phi35-mini"), "mini")
    build_adapters(Path("/tmp/phi35-adapters"), ADAPTERS, rank=16)
    args.prompt_words = prompt_words_for(model_dir, args.prompt_tokens)
    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = measure("lora", CATALOG, {"base": [MODEL], "4 adapters": ADAPTERS}, args)
    wait_for_free_gpu()
    rows += measure(
        "no-lora",
        catalog_variant(str(CATALOG), lambda catalog: catalog["models"][0].pop("lora")),
        {"base": [MODEL]},
        args,
    )
    text = (
        f"Run {started}. {gpu}; Phi-3.5-mini shape, dummy bf16 weights, one replica on the card; four "
        f"rank-16 adapters on qkv/o/gate_up/down (max_loras 4); ~{args.prompt_tokens}-token prompts, "
        f"{args.max_tokens} output tokens, concurrency x {args.rounds} requests per level (at least "
        f"{args.min_requests}). 'vs base traffic': output tok/s against base-model requests on the same "
        f"LoRA-enabled engine.\n\n{table(rows)}\n"
    )
    (out / "gpu_lora.md").write_text(text)
    (out / "gpu_lora.json").write_text(json.dumps({"gpu": gpu, "args": vars(args), "rows": rows}, indent=1))
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
