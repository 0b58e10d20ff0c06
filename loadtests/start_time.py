"""Time to ready: `slmserve serve` of a catalog against bare `vllm serve` of its SmolLM2 model (the
same engine arguments and environment), each started alone, alternating over the rounds. slmserve's
time runs from the command's launch to `/v1/health/ready` answering 200 (every model loaded), bare
vLLM's to `/health` answering 200; the engine replica's own line splits slmserve's engine start into
its phases. Writes a table to docs/benchmarks.md.

`.venv/bin/python -m loadtests.start_time` (the one-model cpu catalog, `make run`'s; about 4 minutes)
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

from loadtests.bench import MODEL
from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from testkit.bare_vllm import serving_bare_vllm
from testkit.serving import serving

# services/engine/deployment.py logs this once an engine replica is ready
PHASES = re.compile(
    r"engine for (?P<model>\S+) ready in (?P<init>[\d.]+)s \(process up (?P<process>[\d.]+)s before; "
    r"model files (?P<files>[\d.]+)s, vLLM engine (?P<engine>[\d.]+)s\)"
)


def slmserve_start(catalog: str) -> tuple[float, dict[str, float]]:
    """Seconds from launch to ready, and the measured model's replica phases."""
    started = time.monotonic()
    with serving(catalog) as server:
        ready_s = time.monotonic() - started
        deadline = time.monotonic() + 10  # Ray forwards a replica's log lines to the driver's with a delay
        while not (phases := _phases_of(server.log.read_text())) and time.monotonic() < deadline:
            time.sleep(0.5)
    return ready_s, phases


def _phases_of(log: str) -> dict[str, float]:
    lines = [m.groupdict() for m in PHASES.finditer(log)]
    return next(({k: float(v) for k, v in m.items() if k != "model"} for m in lines if m["model"] == MODEL), {})


def bare_start(model_dir: str, engine_args: dict, env: dict[str, str], port: int) -> float:
    started = time.monotonic()
    with serving_bare_vllm(model_dir, MODEL, engine_args, port, ROOT / "out" / "start-time-bare-vllm.log", env):
        return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--catalog", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8150)
    args = parser.parse_args(argv)

    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings, resolve_catalog_path
    from services.models.embedded import ensure_embedded_model

    path = resolve_catalog_path(args.catalog)
    settings = Settings(catalog=str(path))
    catalog = load_catalog(path)
    entry = catalog.resolve(MODEL)
    assert entry is not None, f"{args.catalog} does not serve {MODEL}"
    model_dir = str(ensure_embedded_model(MODEL, settings.cache_dir))  # built before the clock runs
    (ROOT / "out").mkdir(exist_ok=True)
    env = runtime.local_environment(settings, catalog) | dict(entry.env)
    started = started_at()
    slmserve: list[float] = []
    bare: list[float] = []
    phases: list[dict[str, float]] = []
    for round_index in range(args.rounds):
        for system in ("slmserve", "bare-vllm") if round_index % 2 == 0 else ("bare-vllm", "slmserve"):
            if system == "slmserve":
                ready_s, replica = slmserve_start(str(path))
                slmserve.append(ready_s)
                phases.append(replica)
            else:
                ready_s = bare_start(model_dir, dict(entry.engine_args), env, args.port)
                bare.append(ready_s)
            print(f"[start-time] round {round_index + 1} {system}: ready after {ready_s:.1f} s", flush=True)

    def seconds(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values) + f" (median {statistics.median(values):.1f})"

    def phase(name: str) -> str:
        return seconds([p[name] for p in phases if name in p]) if any(name in p for p in phases) else "-"

    body = f"""## CPU: time to ready, slmserve serve against bare vllm serve (catalog {Path(args.catalog).stem})

Run {started} on this machine; {args.rounds} starts of each, alternating, each alone. slmserve: from the
launch of `slmserve serve --catalog {args.catalog}` to `/v1/health/ready` answering 200 (Ray, Serve,
HAProxy, the platform application and every engine); bare vLLM: from the launch of its API server
to `/health` answering 200, with {MODEL}'s engine arguments and environment.
Reproduce: `.venv/bin/python -m loadtests.start_time --catalog {args.catalog}`.

| system | seconds to ready |
|---|---|
| slmserve | {seconds(slmserve)} |
| bare vLLM | {seconds(bare)} |

slmserve over bare vLLM (medians): {statistics.median(slmserve) / statistics.median(bare):.2f}x. Inside slmserve's
start, {MODEL}'s engine replica (its own log line): process up before its constructor {phase("process")} s;
constructor to ready {phase("init")} s, of which model files {phase("files")} s and vLLM (its import and
its engine's start) {phase("engine")} s.
"""
    print(body)
    write_section(ROOT / "docs" / "benchmarks.md", f"start-time-{Path(args.catalog).stem}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
