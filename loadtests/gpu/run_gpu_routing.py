"""On the GPU machine (issue 17): the multi-turn routing workload of loadtests/routing_bench.py on
two Phi-3.5-mini-shaped replicas sharing one card, each with a 16 GiB KV cache, once per policy
(prefix-affinity, power-of-two, session), then one replica with a cache for every conversation.
Prefixes of about 2,000 tokens (each conversation's own system prompt).

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_routing --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from loadtests.gpu.make_phi35 import build
from loadtests.routing_bench import SINGLE, measure, results_table
from testkit.conversations import system_prompt
from testkit.serving import catalog_variant

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-mini-routing.yaml"
VISIBLE_TOKENS = {"skip_special_tokens": False, "ignore_eos": True}  # dummy weights: see run_gpu_bench.py


def words_for_prefix(model_dir: Path, tokens: int) -> int:
    """System-prompt words (testkit.conversations.system_prompt) that make about `tokens` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = 16
    while len(tokenizer(system_prompt(0, words), add_special_tokens=False)["input_ids"]) < tokens:
        words += 16
    return words


def wait_for_free_gpu(timeout_s: float = 120, below_mib: int = 4096) -> None:
    """Until the last setup's engines have let go of the card (the next ones ask for 40% each)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        used = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
        ).stdout.split()
        if used and int(used[0]) < below_mib:
            return
        time.sleep(2)
    print(f"[gpu-routing] the card still holds {used} MiB after {timeout_s:.0f}s", flush=True)


def setup(policy: str, replicas: int, kv_bytes: int | None) -> Path:
    def change(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["routing"] = {"policy": policy}
        entry["deployment"]["num_replicas"] = replicas
        entry["deployment"]["ray_actor_options"]["num_gpus"] = 1 / replicas
        if kv_bytes is not None:
            entry["engine_args"]["kv_cache_memory_bytes"] = kv_bytes

    return catalog_variant(str(CATALOG), change)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--replica-kv-gib", type=float, default=16)
    parser.add_argument("--setups", default="prefix-affinity,power-of-two,session,single")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model_dir = build(Path("/tmp/phi35-mini"), "mini")
    args.system_words = words_for_prefix(model_dir, args.prefix_tokens)
    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"[gpu-routing] {gpu}; system prompts of {args.system_words} words = ~{args.prefix_tokens} tokens", flush=True
    )
    kv = int(args.replica_kv_gib * 2**30)
    known = {
        "prefix-affinity": ("prefix-affinity", 2, kv),
        "power-of-two": ("power-of-two", 2, kv),
        "session": ("session", 2, kv),
        "single": ("prefix-affinity", 1, 40 * 2**30),
    }
    rows = []
    for name in args.setups.split(","):
        policy, replicas, kv_bytes = known[name]
        label = SINGLE if name == "single" else name
        wait_for_free_gpu()
        rows.append(
            measure(
                label,
                setup(policy, replicas, kv_bytes),
                policy,
                replicas,
                "phi-3.5-mini",
                args,
                extra_body=VISIBLE_TOKENS,
            )
        )
        table = results_table(rows, args.conversations)
        (out / "gpu_routing.md").write_text(
            f"Run {started}. {gpu}; Phi-3.5-mini shape, dummy bf16 weights; {args.conversations} conversations x "
            f"{args.turns} turns, ~{args.prefix_tokens}-token system prompts, {args.max_tokens} output tokens, "
            f"{args.concurrency} at a time; two replicas share the card "
            f"(num_gpus 0.5, {args.replica_kv_gib:g} GiB KV each); "
            f"'{SINGLE}': one replica with 40 GiB KV.\n\n{table}"
        )
        (out / "gpu_routing.json").write_text(json.dumps({"gpu": gpu, "args": vars(args), "rows": rows}, indent=1))
        print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
