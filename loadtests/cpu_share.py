"""Where the CPU goes (issue 13's CPU gap): slmserve (direct data plane, the cpu catalog) and bare
vLLM with the same engine arguments, each alone on the machine, measured the same way. For each,
the CPU seconds per wall second of every process of its tree, grouped (vLLM's engine core, the
process that answers HTTP, HAProxy, Ray's daemons, Serve's other actors), while idle and while one
stream at a time runs; and the tokens per second of that stream.

`make bench` runs three servers on 2 cores at once; this runs one at a time, so that the figures
say what each system costs itself, not what it suffers from the others.

    .venv/bin/python -m loadtests.cpu_share [--seconds 30]     # about 4 minutes; writes docs/benchmarks.md
    .venv/bin/python -m loadtests.cpu_share --processes [--catalog C]   # slmserve idle, process by process; prints
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from loadtests.bench import MODEL
from loadtests.harness import ROOT, command_line
from loadtests.report import write_section
from loadtests.workload import run_level
from testkit.bare_vllm import serving_bare_vllm
from testkit.serving import serving

GROUPS = ("engine core", "vLLM worker", "HTTP process", "HAProxy", "Ray daemons", "Serve actors", "other")
ENGINE = ("engine core", "vLLM worker")  # the same work in both systems: the model


def group_of(process: psutil.Process) -> str:
    command = " ".join(process.cmdline() or [process.name()])
    if "VLLM::EngineCore" in command or "EngineCore" in process.name():
        return "engine core"
    if "VLLM::Worker" in command or "Worker" in process.name():
        return "vLLM worker"
    engine_replica = "ServeReplica:" in command and ":engine-" in command  # in its model's app or the platform's
    if engine_replica or "vllm.entrypoints.openai.api_server" in command:
        return "HTTP process"
    if "haproxy" in command:
        return "HAProxy"
    if any(daemon in command for daemon in ("gcs_server", "raylet", "log_monitor", "dashboard", "runtime_env")):
        return "Ray daemons"
    if any(actor in command for actor in ("ServeController", "ServeReplica", "HAProxyManager", "ProxyActor")):
        return "Serve actors"
    return "other"


def tree(root: int) -> list[psutil.Process]:
    parent = psutil.Process(root)
    return [parent, *parent.children(recursive=True)]


def command_of(process: psutil.Process) -> str:
    return " ".join(process.cmdline() or [process.name()])


def cpu_seconds(root: int, label: Callable[[psutil.Process], str] = group_of) -> dict[int, tuple[str, float]]:
    """pid -> (its label, CPU seconds so far) for every process of the tree."""
    seconds = {}
    for process in tree(root):
        try:
            times = process.cpu_times()
            seconds[process.pid] = (label(process), times.user + times.system)
        except psutil.Error:
            pass
    return seconds


def share(root: int, seconds: float, load: str | None) -> tuple[dict[str, float], float | None]:
    """CPU seconds per wall second by group over `seconds`, and the stream's tok/s when `load` is a URL."""
    before, started = cpu_seconds(root), time.monotonic()
    tok_s = None
    if load is None:
        time.sleep(seconds)
    else:
        result = asyncio.run(run_level("one", load, MODEL, 1, max(3, int(seconds / 2)), 64, 64))
        tok_s = result.output_tok_per_s
    after, wall = cpu_seconds(root), time.monotonic() - started
    used = dict.fromkeys(GROUPS, 0.0)
    for pid, (group, total) in after.items():
        used[group] += (total - before.get(pid, (group, 0.0))[1]) / wall
    return used, tok_s


def measure(name: str, root: int, url: str, seconds: float) -> dict[str, object]:
    asyncio.run(run_level("warm", url, MODEL, 1, 3, 64, 16))
    idle, _ = share(root, seconds, None)
    busy, tok_s = share(root, seconds, url)
    print(f"[cpu] {name}: idle {idle}; one stream {busy}; {tok_s:.1f} tok/s", flush=True)
    return {"system": name, "idle": idle, "busy": busy, "tok_s": tok_s}


def by_process(root: int, seconds: float) -> list[tuple[float, str]]:
    """CPU seconds per wall second of each process of the tree over `seconds` of idle, busiest first."""
    before, started = cpu_seconds(root, command_of), time.monotonic()
    time.sleep(seconds)
    after, wall = cpu_seconds(root, command_of), time.monotonic() - started
    used = [((total - before.get(pid, (name, 0.0))[1]) / wall, name) for pid, (name, total) in after.items()]
    return sorted(used, reverse=True)


def short_name(command: str) -> str:
    """`ray::ServeController`, `raylet`, `python log_monitor.py`, `python services.cli`: enough to tell."""
    words = command.split()  # Ray pads its actors' process titles with spaces
    if not words:
        return "?"
    if words[0].startswith(("ray::", "VLLM::")) or not Path(words[0]).name.startswith("python"):
        return words[0] if "::" in words[0] else Path(words[0]).name
    scripts = [word for word in words[1:] if word.endswith(".py")]
    scripts = scripts or [word for word in words[1:3] if not word.startswith("-")]
    return " ".join([Path(words[0]).name, *(Path(word).name for word in scripts[:1])])


def process_table(used: list[tuple[float, str]]) -> str:
    lines = [f"| {cpu:.4f} | `{short_name(name)}` |" for cpu, name in used]
    return "| CPU s/s | process |\n|---|---|\n" + "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = "| system | state | " + " | ".join(GROUPS) + " | all but vLLM's engine | tok/s |\n"
    head += "|---|---|" + "---|" * (len(GROUPS) + 2) + "\n"
    lines = []
    for row in rows:
        for state in ("idle", "busy"):
            used = row[state]
            rest = sum(value for group, value in used.items() if group not in ENGINE)
            tok = f"{row['tok_s']:.1f}" if state == "busy" else ""
            label = "idle" if state == "idle" else "one stream"
            cells = " | ".join(f"{used[group]:.3f}" for group in GROUPS)
            lines.append(f"| {row['system']} | {label} | {cells} | {rest:.3f} | {tok} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--processes", action="store_true", help="slmserve idle, process by process (printed only)")
    parser.add_argument("--catalog", default="cpu", help="with --processes: the catalog served")
    args = parser.parse_args(argv)
    if args.processes:
        with serving(args.catalog) as server:
            time.sleep(10)  # past the start's own work
            used = by_process(server.process.pid, args.seconds)
            print(process_table(used), f"all: {sum(cpu for cpu, _ in used):.3f}", flush=True)
        return 0
    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings, resolve_catalog_path
    from services.models.embedded import ensure_embedded_model

    catalog = load_catalog(resolve_catalog_path("cpu"))
    settings = Settings()
    rows = []
    with serving("cpu") as server:
        rows.append(measure("slmserve", server.process.pid, f"{server.base_url}/v1/chat/completions", args.seconds))
    model_dir = str(ensure_embedded_model("smollm2-135m-instruct", settings.cache_dir))
    port = runtime.free_ports(1)[0]
    log = Path(f"/tmp/cpu-share-bare-{port}.log")
    engine_args, env = dict(catalog.models[0].engine_args), runtime.local_environment(settings, catalog)
    with serving_bare_vllm(model_dir, MODEL, engine_args, port, log, env) as bare:
        rows.append(measure("bare vLLM", bare.pid, f"http://127.0.0.1:{port}/v1/chat/completions", args.seconds))
    text = table(rows)
    print(text)
    section = f"""## CPU: where each system's CPU goes

slmserve (`make run`'s cpu catalog: direct data plane, HAProxy, one engine replica) and bare vLLM
(`vllm.entrypoints.openai.api_server`) with the same engine arguments, **each alone on this
machine** (2 cores), measured the same way: CPU seconds per wall second of every process of each
system's tree, by group, over {args.seconds:g} s idle and over {args.seconds:g} s of one stream at a time
(64-word prompt, 64 output tokens). Reproduce: `.venv/bin/python -m loadtests.cpu_share`.

{text}"""
    write_section(ROOT / "docs" / "benchmarks.md", "cpu-share", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
