"""The ReplicaPicker alone (issue 32's target: 2,000 decisions per core-second, p99 <= 2 ms): the real
platform under Ray with stand-in engine replicas (loadtests/standin), and a load generator in its own
process that calls the picker's `/internal/route` exactly as HAProxy's Lua does (a new connection,
HTTP/1.0, the chat body), open-loop at each rate. Per rate: decisions per core-second of the picker
processes, the call's latency as HAProxy would see it, and the picker's own decision time
(slmserve_routing_decision_seconds), printed, and with --out written as JSON (docs/scale.md quotes them).

    .venv/bin/python -m loadtests.picker_bench [--replicas 16] [--pickers 1] [--rates 250,500,1000] [--step-s 8]

Every process on this machine belongs to the run while it lasts: run nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from loadtests.scale import _decision_buckets, _decision_ms, catalog, chat_body, open_loop, run_driver, usage
from loadtests.workload import percentile

PICKER = "ReplicaPicker"
DRIVER = [sys.executable, "-m", "loadtests.picker_bench", "--drive"]


def _request(sent: int) -> bytes:
    """The bytes HAProxy's Lua sends (ray/serve/_private/ingress_request_router.lua.tmpl)."""
    body = json.dumps(chat_body(sent, 16)).encode()
    head = (
        "POST /internal/route HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"x-request-id: bench-{sent}\r\n\r\n"
    )
    return head.encode() + body


async def _call(host: str, port: int, request: bytes, out: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        response = await reader.read()  # to EOF, as the Lua's receive("*a")
        writer.close()
    except OSError as error:
        out.setdefault(f"error {type(error).__name__}", []).append(1)
        return
    status = response[:16].split(b" ")[1].decode(errors="replace") if response else "empty"
    out.setdefault("latency_s" if status == "200" else f"status {status}", []).append(time.perf_counter() - started)


async def drive(pickers: list[tuple[str, int]], rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, list[float]] = {}

    def call(sent: int) -> Awaitable[None]:
        host, port = pickers[sent % len(pickers)]  # the Lua's round-robin over the pool
        return _call(host, port, _request(sent), out)

    sent, sending_s = await open_loop(rate, seconds, call)
    latencies = out.pop("latency_s", [])
    return {
        "sent": sent,
        "ok": len(latencies),
        "sending_s": sending_s,
        "failures": {key: len(value) for key, value in out.items()},
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else math.nan,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else math.nan,
    }


def picker_endpoints(port: int) -> list[tuple[str, int]]:
    """The picker pool HAProxy's Lua round-robins over, read from the script Ray wrote for it."""
    from services.runtime import haproxy_state_dir

    scripts = sorted(haproxy_state_dir(port).rglob("ingress_request_router.lua"), key=lambda p: p.stat().st_mtime)
    if not scripts:
        raise RuntimeError("HAProxy has no ingress request router script: is there a replica choice?")
    routers = scripts[-1].read_text().split("local ROUTERS = ", 1)[1].split("local REPLICA_TARGETS", 1)[0]
    return [(host, int(port)) for host, port in re.findall(r'host = "([^"]+)", port = (\d+)', routers)]


def run(replicas: int, pickers: int, rates: list[float], step_s: float) -> list[dict[str, Any]]:
    from services import runtime
    from services.core.catalog import parse_catalog
    from services.core.settings import Settings

    port = runtime.free_ports(1)[0]
    settings = Settings(port=port, app_name=f"picker{replicas}", cache_dir=Path("/tmp/slmserve-scale-cache"))
    shape = catalog(replicas)
    shape["edge"]["deployment"]["num_replicas"] = pickers
    parsed = parse_catalog(shape, "picker bench")
    runtime.prepare_environment(settings, parsed)

    import httpx

    from loadtests.standin.engine import StandInDirectEngine

    engine_deployment = parsed.models[0].deployment_name
    print(f"[picker] {replicas} replicas, {pickers} picker(s): starting", flush=True)
    runtime.start_local(settings, parsed, wait=True, direct_engine=StandInDirectEngine)
    base = runtime.local_base_url(settings)
    time.sleep(5)  # the replicas' first routing stats
    endpoints = picker_endpoints(port)
    scraper = httpx.Client(timeout=60)
    rows = []
    for rate in rates:
        text_before, before = scraper.get(f"{base}/metrics").text, usage(engine_deployment)
        result = run_driver([*DRIVER, json.dumps(endpoints), "--rate", str(rate), "--step-s", str(step_s)], step_s + 60)
        time.sleep(1.5)  # the last decision records reach the hub
        after, text_after = usage(engine_deployment), scraper.get(f"{base}/metrics").text
        cpu_s = after[PICKER]["cpu_s"] - before[PICKER]["cpu_s"]
        decided, decided_before = _decision_buckets(text_after), _decision_buckets(text_before)
        row = {
            "replicas": replicas,
            "pickers": pickers,
            "rate": rate,
            "achieved_per_s": result["ok"] / result["sending_s"],
            "failures": result["failures"],
            "picker_cpu_s": cpu_s,
            "per_core_s": result["ok"] / cpu_s if cpu_s else math.nan,
            "call_p50_ms": result["p50_ms"],
            "call_p99_ms": result["p99_ms"],
            "decision_p50_ms": _decision_ms(decided_before, decided, 0.5),
            "decision_p99_ms": _decision_ms(decided_before, decided, 0.99),
        }
        rows.append(row)
        print(
            f"[picker] {replicas} replicas, {pickers} picker(s), {rate:g}/s: {row['achieved_per_s']:.0f}/s answered, "
            f"failures {row['failures']}; {row['per_core_s']:.0f} decisions per core-second; call p50 "
            f"{row['call_p50_ms']:.2f} p99 {row['call_p99_ms']:.2f} ms; decision p50 {row['decision_p50_ms']:.2f} "
            f"p99 {row['decision_p99_ms']:.2f} ms",
            flush=True,
        )
    scraper.close()
    runtime.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--pickers", type=int, default=1)
    parser.add_argument("--rates", default="250,500,1000")
    parser.add_argument("--step-s", type=float, default=8.0)
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        endpoints = [(host, int(port)) for host, port in json.loads(args.drive)]
        if any(host != "127.0.0.1" for host, _ in endpoints):
            parser.error("the load goes to 127.0.0.1 only")
        print(json.dumps(asyncio.run(drive(endpoints, args.rate, args.step_s))), flush=True)
        return 0
    rows = run(args.replicas, args.pickers, [float(rate) for rate in args.rates.split(",")], args.step_s)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
