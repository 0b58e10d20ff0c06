"""Scale to zero on CPU (issue 29): a model that starts with no replica gets a burst of held requests,
is answered, goes back to zero when idle, and is held again. Writes docs/scale_to_zero.md and a
timeline plot (each request's wait and answer, the model's running replicas) to docs/.

    .venv/bin/python -m loadtests.scale_to_zero [--burst 8] [--rounds 2]

The CPU target is the first of the burst's requests answered within the replica's start plus 5 s,
every request answered. What is measured here is the client's wait: the replica's start (Serve's
decision, the replica actor, vLLM's imports, the model's load) plus the first token.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from services.core.timing import REPLICA_STATES_MAX_AGE_S
from testkit.idle_models import at_zero
from testkit.serving import catalog_variant, running_replicas, serving, until

ROOT = Path(__file__).resolve().parents[1]
MODEL = "held-smollm2"
TO_ZERO_S = 10
QUESTION = [{"role": "user", "content": "The capital of France is"}]


def one_held_model(catalog: dict[str, Any]) -> None:
    entry = catalog["models"][0]
    entry["env"] = {"OMP_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    entry["engine_args"]["kv_cache_memory_bytes"] = 134217728
    catalog["models"] = [at_zero(entry, MODEL, 300, TO_ZERO_S)]


def ask(base_url: str, t0: float) -> dict[str, Any]:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "stream": True}
    sent = time.monotonic()
    first = None
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=400) as response:
        ok = response.status_code == 200
        for line in response.iter_lines():
            if first is None and '"content"' in line:
                first = time.monotonic()
    done = time.monotonic()
    return {"sent": sent - t0, "first": (first - t0) if first else None, "done": done - t0, "ok": ok and bool(first)}


def burst(base_url: str, size: int, t0: float) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(size) as pool:
        return list(pool.map(lambda _: ask(base_url, t0), range(size)))


def plot(rounds: list[list[dict[str, Any]]], replicas: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (timeline, counts) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    row = 0
    for number, requests in enumerate(rounds):
        for request in requests:
            first = request["first"] or request["done"]
            timeline.plot([request["sent"], first], [row, row], color="tab:orange", linewidth=3)
            timeline.plot([first, request["done"]], [row, row], color="tab:blue", linewidth=3)
            row += 1
        timeline.axhline(row - 0.5, color="grey", linewidth=0.5)
        timeline.text(requests[0]["sent"], row - 1, f" round {number + 1}", va="bottom", fontsize=8)
    timeline.set_ylabel("request")
    timeline.set_title("Held while a replica starts (orange), then streamed (blue)")
    counts.step([t for t, _ in replicas], [n for _, n in replicas], where="post")
    counts.set_ylabel("RUNNING replicas\n(/metrics, up to 5 s late)")
    counts.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds: list[list[dict[str, Any]]] = []
    replicas: list[tuple[float, float]] = []
    with serving(catalog_variant("cpu", one_held_model)) as server:
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                replicas.append((time.monotonic() - t0, running_replicas(server.base_url).get(MODEL, 0)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for number in range(args.rounds):
                for _ in range(2):  # the hub reads Serve's replica states at most every 5 s: zero twice, apart
                    gone = until(lambda: running_replicas(server.base_url).get(MODEL, 0) == 0, TO_ZERO_S + 120)
                    assert gone is not None, "the model did not go back to zero"
                    time.sleep(REPLICA_STATES_MAX_AGE_S + 1)
                print(f"[scale-to-zero] round {number + 1}: at zero; sending {args.burst} requests", flush=True)
                rounds.append(burst(server.base_url, args.burst, t0))
                firsts = sorted(r["first"] - r["sent"] for r in rounds[-1] if r["first"])
                span = f"{firsts[0]:.1f}-{firsts[-1]:.1f} s"
                print(f"[scale-to-zero] round {number + 1}: first tokens after {span}", flush=True)
        finally:
            stop.set()
            sampler.join()
    lines = [
        "# Scale to zero on CPU",
        "",
        f"Run {started}: `.venv/bin/python -m loadtests.scale_to_zero --burst {args.burst} --rounds {args.rounds}`, "
        "SmolLM2-135M on this machine's CPU (2 cores), the model at zero replicas before each round "
        f"(`min_replicas: 0`, `downscale_to_zero_delay_s: {TO_ZERO_S}`, `idle.hold_timeout_s: 300`).",
        "",
        "| round | requests | answered | first token of the first request (s) | of the last (s) |",
        "|---|---|---|---|---|",
    ]
    for number, requests in enumerate(rounds):
        waits = sorted(r["first"] - r["sent"] for r in requests if r["first"])
        lines.append(
            f"| {number + 1} | {len(requests)} | {sum(r['ok'] for r in requests)} | {waits[0]:.1f} | {waits[-1]:.1f} |"
        )
    lines += [
        "",
        "Each wait is the replica's start (Serve's decision on the held requests, the replica actor, vLLM's "
        "imports and the model's load) plus the first token; the burst's requests share one start.",
        "",
        "![timeline](scale_to_zero.png)",
        "",
    ]
    (out / "scale_to_zero.md").write_text("\n".join(lines))
    plot(rounds, replicas, out / "scale_to_zero.png")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
