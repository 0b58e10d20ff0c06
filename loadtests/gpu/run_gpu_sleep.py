"""On the GPU machine (issue 29): two Phi-3.5-mini-shaped models share one card through slmserve, each
with `idle.sleep_after_s`. Model `a` is left idle until it falls asleep (vLLM's sleep mode), then
asked again, `--wakes` times: the first request after each sleep pays the wake. Model `b` is asked
twice a second throughout, so it never sleeps, and its TTFT during `a`'s wakes is compared with its
TTFT outside them. The card's memory is read while `a` sleeps and while it is awake.

    PYTHONPATH=/tmp/site:$PWD python3 -m loadtests.gpu.run_gpu_sleep --out $OUT

With --share N, three such models share the card instead, each asking for 0.45 of it awake, so two
fit and the third must wait for one to sleep (services/engine/card_memory.py); traffic moves from
model to model in N bursts, and each burst's first request pays the other's sleep and its own wake.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from loadtests.gpu.make_phi35 import build
from testkit.serving import catalog_variant, serving

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "loadtests" / "gpu" / "phi35-mini-dummy.yaml"
BODY = {"max_tokens": 16, "ignore_eos": True, "skip_special_tokens": False, "temperature": 0}


def two_sleepers(sleep_after_s: float):
    def change(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["engine_args"]["gpu_memory_utilization"] = 0.35
        entry["deployment"]["ray_actor_options"]["num_gpus"] = 0.5
        entry["idle"] = {"sleep_after_s": sleep_after_s}
        catalog["models"] = [{**entry, "name": "a"}, {**entry, "name": "b"}]

    return change


def three_sharers(kv_bytes: int):
    """Three models on one card, each asking for 0.45 of it awake (weights plus `kv_bytes` of KV
    cache): two fit awake, three do not, so the card's least recently used one sleeps for a wake."""

    def change(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["engine_args"] |= {"gpu_memory_utilization": 0.45, "kv_cache_memory_bytes": kv_bytes}
        entry["deployment"]["ray_actor_options"]["num_gpus"] = 0.33
        entry["idle"] = {"sleep_after_s": 3600}  # never idle long enough: only the card puts one to sleep
        catalog["models"] = [{**entry, "name": name} for name in "abc"]

    return change


def gpu_total_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout.split()
    return int(out[0])


def share_run(turns: int) -> dict:
    """Traffic moves a, b, c, a, ... one burst at a time: each burst's model was the one asleep, so
    its first request waits for the least recently used awake model to sleep and for its own wake."""
    kv_bytes = int(gpu_total_mib() * 2**20 * 0.42) - 9 * 2**30  # an engine ~0.42 of the card with weights
    catalog = catalog_variant(str(CATALOG), three_sharers(kv_bytes))
    bursts = []
    with serving(catalog, ready_timeout_s=1200) as server, httpx.Client(base_url=server.base_url, timeout=120) as http:
        started = time.monotonic()
        for model in "abc":  # each answers once (the one asleep after the starts is woken here)
            ttft(http, model, "warm up")
        print(f"[gpu-share] all three answered after {time.monotonic() - started:.0f}s", flush=True)
        for n in range(turns):
            model = "abc"[n % 3]
            _, first, ok = ttft(http, model, f"burst {n}")
            rest = [ttft(http, model, f"burst {n} request {i}") for i in range(3)]
            bursts.append(
                {
                    "model": model,
                    "first_ttft_s": first,
                    "ok": ok and all(r[2] for r in rest),
                    "rest_ttft_s": [r[1] for r in rest],
                    "card_mib": gpu_used_mib(),
                }
            )
            print(
                f"[gpu-share] burst {n} to {model}: first token {first * 1000:.0f} ms, then "
                f"{', '.join(f'{r[1] * 1000:.0f}' for r in rest)} ms; card {bursts[-1]['card_mib']} MiB",
                flush=True,
            )
        states = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
    firsts = [b["first_ttft_s"] for b in bursts if b["ok"]]
    return {
        "gpu": subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip(),
        "card_mib": gpu_total_mib(),
        "kv_cache_bytes_each": kv_bytes,
        "bursts": bursts,
        "errors": sum(not b["ok"] for b in bursts),
        "first_ttft_s": {"p50": statistics.median(firsts), "p95": percentile(firsts, 0.95), "max": max(firsts)},
        "rest_ttft_s_p50": statistics.median([s for b in bursts for s in b["rest_ttft_s"]]),
        "card_mib_max": max(b["card_mib"] for b in bursts),
        "models": states,
    }


def gpu_used_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout.split()
    return int(out[0]) if out else -1


def ttft(http: httpx.Client, model: str, question: str) -> tuple[float, float, bool]:
    """(start time, seconds to the first streamed token, answered without error)."""
    body = {**BODY, "model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    started = time.monotonic()
    first = None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return started, float("nan"), False
        for line in response.iter_lines():
            if first is None and '"content"' in line:
                first = time.monotonic() - started
    return started, first if first is not None else float("nan"), first is not None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--wakes", type=int, default=20)
    parser.add_argument("--sleep-after-s", type=float, default=2.0)
    parser.add_argument("--share", type=int, default=0, help="instead: three models, two fit awake; N bursts")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    build(Path("/tmp/phi35-mini"), "mini")
    if args.share:
        results = {"started": started_at, **share_run(args.share)}
        (out / "gpu_share.json").write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in results.items() if k != "bursts"}, indent=2), flush=True)
        return 0
    catalog = catalog_variant(str(CATALOG), two_sleepers(args.sleep_after_s))
    wakes, warm, memory = [], [], []
    said: list[dict[str, str]] = []  # /v1/models' states just before each wake
    neighbour: list[tuple[float, float, bool]] = []
    windows: list[tuple[float, float]] = []
    with serving(catalog, ready_timeout_s=900) as server, httpx.Client(base_url=server.base_url, timeout=120) as http:
        for model in ("a", "b"):  # compile and warm both before measuring
            ttft(http, model, "warm up")
        stop = threading.Event()

        def keep_b_awake() -> None:
            with httpx.Client(base_url=server.base_url, timeout=120) as own:
                while not stop.is_set():
                    neighbour.append(ttft(own, "b", "steady neighbour traffic"))
                    time.sleep(0.5)

        steady = threading.Thread(target=keep_b_awake)
        steady.start()
        try:
            for n in range(args.wakes):
                # `a` idle past its sleep_after_s: asleep. An engine's first sleep takes seconds (4.9 s
                # measured for issue 29), later ones a fifth of a second: the first wake waits it out.
                time.sleep(args.sleep_after_s + 2.0 + (8.0 if n == 0 else 0.0))
                asleep_mib = gpu_used_mib()
                said.append({card["id"]: card["state"] for card in http.get("/v1/models").json()["data"]})
                begun, seconds, ok = ttft(http, "a", f"wake {n}")
                windows.append((begun, begun + (seconds if ok else 0.0)))
                wakes.append((seconds, ok))
                warm.append(ttft(http, "a", f"warm {n}")[1:])
                memory.append((asleep_mib, gpu_used_mib()))
                print(
                    f"[gpu-sleep] wake {n}: first token {seconds * 1000:.0f} ms, warm {warm[-1][0] * 1000:.0f} ms, "
                    f"card {asleep_mib} -> {memory[-1][1]} MiB",
                    flush=True,
                )
        finally:
            stop.set()
            steady.join()
        log = server.log.read_text()
    during = [s for begun, s, ok in neighbour if ok and any(a <= begun <= b for a, b in windows)]
    outside = [s for begun, s, ok in neighbour if ok and not any(a - 1 <= begun <= b + 1 for a, b in windows)]
    wake_s = [s for s, ok in wakes if ok]
    results = {
        "started": started_at,
        "gpu": subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip(),
        "wakes": len(wakes),
        "errors": sum(not ok for _, ok in wakes) + sum(not ok for _, ok in warm) + sum(not ok for *_, ok in neighbour),
        "wake_ttft_s": {"p50": statistics.median(wake_s), "p95": percentile(wake_s, 0.95), "max": max(wake_s)},
        "warm_ttft_s": {"p50": statistics.median([s for s, ok in warm if ok])},
        "neighbour_ttft_s": {
            "during_wakes_p50": statistics.median(during) if during else None,
            "during_wakes_max": max(during) if during else None,
            "outside_p50": statistics.median(outside) if outside else None,
            "samples": [len(during), len(outside)],
        },
        "wake_ttft_s_each": [s for s, _ in wakes],
        "warm_ttft_s_each": [s for s, _ in warm],
        "neighbour_ttft_s_during_wakes": during,
        "card_mib_asleep_then_awake": memory,
        "v1_models_states_before_each_wake": said,
        "engine_wake_log_lines": [line for line in log.splitlines() if "engine woke in" in line][-3:],
    }
    (out / "gpu_sleep.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
