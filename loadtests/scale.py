"""The platform at 1 to 64 engine replicas (issue 32 item 2): the real HAProxy, ReplicaPicker, edge,
metrics hub and limit broker under Ray, with stand-in engines (loadtests/standin: vLLM's pace on an
H200, no compute), driven at rising request rates until the machine saturates. Per component it
reports CPU seconds per 1,000 requests, cores in use and memory; the ReplicaPicker's decision time
(slmserve_routing_decision_seconds) and decisions per core-second; the hub's scrape time and its CPU
per replica; admissions per second through the broker. Writes docs/scale_live.md and
docs/scale_live.png.

    .venv/bin/python -m loadtests.scale [--replicas 1,4,16,64] [--rates 10,25,50,100] [--step-s 10]
    .venv/bin/python -m loadtests.scale --one 64 --result r64.json ...   # one count, saved (elsewhere)
    .venv/bin/python -m loadtests.scale --results r16.json,r64.json --machine "..." --stem scale_big

Each replica count runs in its own process with its own local Ray (one instance at a time on
127.0.0.1). Every process on this machine belongs to the run while it lasts: run nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "standin-phi35-mini"
DOCS = ROOT / "docs"


def catalog(replicas: int) -> dict[str, Any]:
    """One stand-in model behind the default policy (prefix affinity), with an in-flight bound high
    enough never to refuse but present, so that every request is admitted by the limit broker."""
    return {
        "version": 1,
        "description": f"scale run: {replicas} stand-in engine replicas",
        "edge": {"deployment": {"num_replicas": 1, "max_ongoing_requests": 4096, "ray_actor_options": {"num_cpus": 0}}},
        "models": [
            {
                "name": MODEL,
                "source": "embedded://smollm2-135m-instruct",  # never read: the stand-in loads nothing
                "max_in_flight": 100_000,
                "deployment": {
                    "num_replicas": replicas,
                    "max_ongoing_requests": 512,
                    "ray_actor_options": {"num_cpus": 0},
                },
            }
        ],
    }


# ---- what each process on the machine is, and what it has used --------------------------------


def _component(pid: int, engine_deployment: str) -> str | None:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if Path(command.split(" ", 1)[0]).name == "haproxy":
        return "HAProxy"
    if command.startswith("ray::ServeReplica:"):
        deployment = command.split(" ", 1)[0].split(":")[-1].split(".", 1)[0]  # Ray adds ".method" while busy
        return "engine replicas (stand-in)" if deployment == engine_deployment else deployment
    if command.startswith("ray::ServeController"):
        return "Serve controller"
    if "raylet" in command.split(" ", 1)[0] or "gcs_server" in command.split(" ", 1)[0]:
        return "Ray (raylet, GCS)"
    if command.startswith("ray::") or "/ray/" in command:
        return "Ray (other)"
    return None  # the load generator's CPU is read from its exit (run_one)


def usage(engine_deployment: str) -> dict[str, dict[str, float]]:
    """component -> {cpu_s, rss_mb, processes}."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, dict[str, float]] = defaultdict(lambda: {"cpu_s": 0.0, "rss_mb": 0.0, "processes": 0})
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        name = _component(int(entry.name), engine_deployment)
        if name is None:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            rss_pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found[name]["cpu_s"] += (int(fields[11]) + int(fields[12])) / ticks
        found[name]["rss_mb"] += rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        found[name]["processes"] += 1
    return dict(found)


# ---- the load: an open-loop Poisson stream of short streamed chats, from its own process --------


async def _one(session: Any, url: str, body: dict[str, Any], out: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    first = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                out[f"status {response.status}: {_reason(await response.read())}"].append(1)
                return
            async for line in response.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
                if line.startswith(b"data: [DONE]"):
                    break
        out["ttft_s"].append(first if first is not None else math.nan)
        out["e2e_s"].append(time.perf_counter() - started)
    except Exception as error:
        out[f"error {type(error).__name__}"].append(1)


def _reason(body: bytes) -> str:
    """An OpenAI error's code, else the start of the body (HAProxy's own 503s are plain text)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return body[:60].decode(errors="replace").strip()


def chat_body(sent: int, tokens: int) -> dict[str, Any]:
    """The load's `sent`-th request: 64 conversations, so the prefix policy has homes to keep."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": f"You are assistant {sent % 64}. " + "Be brief. " * 50},
            {"role": "user", "content": f"question {sent}"},
        ],
        "max_tokens": tokens,
        "stream": True,
    }


async def open_loop(rate: float, seconds: float, start: Callable[[int], Awaitable[None]]) -> tuple[int, float]:
    """Starts `start(n)` for n = 0, 1, ... at Poisson arrivals of `rate` a second for `seconds`, then
    waits up to 30 s for them: (requests started, seconds spent starting them)."""
    tasks, started, sent, next_at = [], time.perf_counter(), 0, 0.0
    rng = random.Random(7)
    while next_at < seconds:
        delay = started + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(start(sent)))
        sent += 1
        next_at += rng.expovariate(rate)
    sending_s = time.perf_counter() - started
    await asyncio.wait(tasks, timeout=30)
    return sent, sending_s


async def drive(base_url: str, rate: float, seconds: float, tokens: int) -> dict[str, Any]:
    import aiohttp

    out: dict[str, list[float]] = defaultdict(list)
    url = f"{base_url}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4000)) as session:
        sent, sending_s = await open_loop(rate, seconds, lambda n: _one(session, url, chat_body(n, tokens), out))
    done = out["e2e_s"]
    return {
        "sent": sent,
        "ok": len(done),
        "sending_s": sending_s,
        "wall_s": time.perf_counter() - started,
        "failures": {key: len(value) for key, value in out.items() if key not in ("ttft_s", "e2e_s")},
        "ttft_s": [value for value in out["ttft_s"] if not math.isnan(value)],
        "e2e_s": done,
    }


def run_driver(command: list[str], timeout_s: float) -> dict[str, Any]:
    """Run a load generator in a process of its own; its result is the JSON of its last line."""
    driven = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if driven.returncode != 0:
        raise RuntimeError(driven.stderr[-2000:])
    result: dict[str, Any] = json.loads(driven.stdout.strip().splitlines()[-1])
    return result


# ---- one replica count -------------------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _decision_buckets(text: str) -> dict[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    from services.metrics.recent import cumulative_buckets

    return cumulative_buckets(list(text_string_to_metric_families(text)), "slmserve_routing_decision_seconds")


def _decision_ms(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile of the decisions taken between two scrapes, in ms (nan: none)."""
    from services.metrics.recent import histogram_quantile, increase

    value = histogram_quantile(increase(before, after), q)
    return math.nan if value is None else value * 1000


def run_one(replicas: int, rates: list[float], step_s: float, tokens: int) -> dict[str, Any]:
    from services import runtime
    from services.core.catalog import parse_catalog
    from services.core.settings import Settings

    port = runtime.free_ports(1)[0]
    settings = Settings(port=port, app_name=f"scale{replicas}", cache_dir=Path("/tmp/slmserve-scale-cache"))
    parsed = parse_catalog(catalog(replicas), "scale run")
    runtime.prepare_environment(settings, parsed)  # before the stand-in's module imports Ray

    import httpx

    from loadtests.standin.engine import StandInDirectEngine

    engine_deployment = parsed.models[0].deployment_name
    started = time.monotonic()
    print(f"[scale] {replicas} replicas: starting", flush=True)
    runtime.start_local(settings, parsed, wait=True, direct_engine=StandInDirectEngine)
    base = runtime.local_base_url(settings)
    start_s = time.monotonic() - started
    print(f"[scale] {replicas} replicas: serving after {start_s:.0f}s", flush=True)
    time.sleep(5)  # the replicas' first snapshots and routing stats
    scraper = httpx.Client(timeout=60)  # one client: a new one per call costs tens of ms of its own setup
    metrics = lambda: scraper.get(f"{base}/metrics").text  # noqa: E731

    idle_before, idle_at = usage(engine_deployment), time.monotonic()
    time.sleep(10)
    idle_after, idle_s = usage(engine_deployment), time.monotonic() - idle_at
    scrapes = []
    for _ in range(5):
        at = time.perf_counter()
        size = len(scraper.get(f"{base}/metrics").content)
        scrapes.append(time.perf_counter() - at)
    idle_cores = {
        name: (idle_after[name]["cpu_s"] - idle_before.get(name, {"cpu_s": 0.0})["cpu_s"]) / idle_s
        for name in idle_after
    }
    hub_idle = idle_cores.get("MetricsHub", 0.0)
    print(
        f"[scale] {replicas} replicas at idle, cores: "
        + ", ".join(f"{name} {cores:.3f}" for name, cores in sorted(idle_cores.items(), key=lambda item: -item[1])),
        flush=True,
    )
    print(
        f"[scale] {replicas} replicas: /metrics {statistics.median(scrapes) * 1000:.1f} ms ({size / 1e3:.0f} kB); "
        f"hub CPU idle {hub_idle * 1000:.1f} ms/s",
        flush=True,
    )
    steps = []
    for rate in rates:
        text_before, before = metrics(), usage(engine_deployment)
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = ["--drive", base, "--rate", str(rate), "--step-s", str(step_s), "--tokens", str(tokens)]
        result = run_driver([sys.executable, "-m", "loadtests.scale", *load], step_s + 120)
        time.sleep(1.5)  # the last records reach the hub
        after, text_after = usage(engine_deployment), metrics()
        wall = result["wall_s"]
        cpu = {name: after[name]["cpu_s"] - before.get(name, {"cpu_s": 0.0})["cpu_s"] for name in after}
        client_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the generator has exited: its CPU is here
        cpu["load generator"] = (client_after.ru_utime + client_after.ru_stime) - (
            client_before.ru_utime + client_before.ru_stime
        )
        ok = max(result["ok"], 1)
        decided, decided_before = _decision_buckets(text_after), _decision_buckets(text_before)
        decisions = decided.get(math.inf, 0.0) - decided_before.get(math.inf, 0.0)
        step = {
            "rate": rate,
            "achieved_per_s": result["ok"] / result["sending_s"],
            "sent": result["sent"],
            "ok": result["ok"],
            "failures": result["failures"],
            "ttft_p50_ms": _quantile(result["ttft_s"], 0.5) * 1000,
            "ttft_p99_ms": _quantile(result["ttft_s"], 0.99) * 1000,
            "e2e_p50_ms": _quantile(result["e2e_s"], 0.5) * 1000,
            "cpu_per_1000": {name: seconds / ok * 1000 for name, seconds in cpu.items()},
            "cores": {name: seconds / wall for name, seconds in cpu.items()},
            "rss_mb": {name: after[name]["rss_mb"] for name in after},
            "processes": {name: after[name]["processes"] for name in after},
            "decisions": decisions,
            "decision_p50_ms": _decision_ms(decided_before, decided, 0.5),
            "decision_p99_ms": _decision_ms(decided_before, decided, 0.99),
        }
        steps.append(step)
        busiest = max(step["cores"].items(), key=lambda item: item[1])
        print(
            f"[scale] {replicas} replicas, {rate:g}/s: {step['achieved_per_s']:.1f}/s ok, failures {step['failures']}, "
            f"TTFT p50 {step['ttft_p50_ms']:.0f} p99 {step['ttft_p99_ms']:.0f} ms; decision p50 "
            f"{step['decision_p50_ms']:.2f} p99 {step['decision_p99_ms']:.2f} ms; busiest {busiest[0]} "
            f"{busiest[1]:.2f} cores; machine {sum(step['cores'].values()):.2f} cores",
            flush=True,
        )
        if result["ok"] < 0.9 * result["sent"] or step["achieved_per_s"] < 0.8 * rate:
            print(f"[scale] {replicas} replicas: saturated at {rate:g}/s", flush=True)
            break
    scraper.close()
    runtime.shutdown()
    return {
        "replicas": replicas,
        "start_s": start_s,
        "scrape_ms": statistics.median(scrapes) * 1000,
        "scrape_kb": size / 1e3,
        "hub_idle_ms_per_s": hub_idle * 1000,
        "idle_rss_mb": {name: value["rss_mb"] for name, value in idle_after.items()},
        "idle_cores": idle_cores,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,4,16,64")
    parser.add_argument("--rates", default="10,25,50,100")
    parser.add_argument("--step-s", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--drive", metavar="BASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(DOCS))
    parser.add_argument("--results", help="write the report from these saved runs (comma-separated --result files)")
    parser.add_argument("--machine", help="where the saved runs ran, for the report")
    parser.add_argument("--stem", default="scale_live", help="the report's file names under --out")
    args = parser.parse_args(argv)
    if args.drive:
        if not args.drive.startswith("http://127.0.0.1:"):
            parser.error("the load goes to 127.0.0.1 only")
        print(json.dumps(asyncio.run(drive(args.drive, args.rate, args.step_s, args.tokens))), flush=True)
        return 0
    rates = [float(value) for value in args.rates.split(",")]
    if args.one is not None:
        Path(args.result).write_text(json.dumps(run_one(args.one, rates, args.step_s, args.tokens)))
        return 0
    from loadtests.scale_report import THIS_MACHINE, write_report

    if args.results:
        saved = [json.loads(Path(path).read_text()) for path in args.results.split(",")]
        command = " ".join(["python -m loadtests.scale", "--replicas", ",".join(str(run["replicas"]) for run in saved)])
        write_report(saved, Path(args.out), command, args.machine or THIS_MACHINE, args.stem)
        return 0
    runs = []
    for replicas in (int(value) for value in args.replicas.split(",")):
        result = Path(f"/tmp/slmserve-scale-{replicas}.json")
        result.unlink(missing_ok=True)
        log = Path(f"/tmp/slmserve-scale-{replicas}.log")
        command = [sys.executable, "-m", "loadtests.scale", "--one", str(replicas), "--rates", args.rates]
        command += ["--step-s", str(args.step_s), "--tokens", str(args.tokens), "--result", str(result)]
        with (
            log.open("w") as written,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT) as child,
        ):
            assert child.stdout is not None
            for line in child.stdout:  # Ray's logs to the file; the run's progress here too
                written.write(line)
                if line.startswith("[scale]"):
                    print(line, end="", flush=True)
        if child.returncode != 0 or not result.exists():
            raise SystemExit(f"[scale] the run with {replicas} replicas failed (rc {child.returncode}); see {log}")
        runs.append(json.loads(result.read_text()))
    write_report(runs, Path(args.out), " ".join(["python -m loadtests.scale", *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
