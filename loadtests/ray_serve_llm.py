"""Ray Serve LLM as a server of its own, for benchmarks that put it beside slmserve on one machine:
its own local Ray, its own HAProxy (Ray Serve's ingress, as slmserve's), direct streaming on
(`RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1`), `ray.serve.llm.build_openai_app` with one model.

    python -m loadtests.ray_serve_llm --model-dir DIR --name NAME --port 8202 \\
        --engine-args '{"max_model_len": 4096, "gpu_memory_utilization": 0.4}' [--cpu]

It prints `[ray-serve-llm] ready; metrics on port N` (Ray's metrics agent) once /v1/models answers,
and serves until it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtests.harness import ROOT, command_line


def start(
    model_dir: str | Path,
    name: str,
    engine_args: dict,
    port: int,
    log: Path,
    *,
    cpu: bool = False,
    max_ongoing_requests: int = 512,
) -> subprocess.Popen:
    """This server, in a session of its own (as a user's shell would start it); stop it with SIGTERM."""
    command = [sys.executable, "-m", "loadtests.ray_serve_llm", "--model-dir", str(model_dir), "--name", name]
    command += ["--port", str(port), "--engine-args", json.dumps(engine_args)]
    command += ["--max-ongoing-requests", str(max_ongoing_requests)] + (["--cpu"] if cpu else [])
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def wait_ready(process: subprocess.Popen, log: Path, timeout_s: float = 900) -> str:
    """Once it serves: the URL of its Ray's metrics agent, which it names in its ready line (scraped
    as the other systems' /metrics are)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("[ray-serve-llm] ready"):
                return f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}"
        if process.poll() is not None:
            raise RuntimeError(f"Ray Serve LLM exited with {process.returncode} (see {log})")
        time.sleep(1)
    raise TimeoutError(f"Ray Serve LLM was not ready in {timeout_s:.0f}s (see {log})")


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine-args", default="{}", help="vLLM engine arguments, JSON")
    parser.add_argument("--cpu", action="store_true", help="vLLM's CPU engine (else one GPU)")
    parser.add_argument("--max-ongoing-requests", type=int, default=512)
    args = parser.parse_args(argv)

    from services import runtime
    from services.core.settings import Settings

    os.environ["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"  # read when ray.serve.llm is imported
    os.environ.update(runtime.ingress_environment(Settings(port=args.port)))
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")  # never join another
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    config = LLMConfig(
        model_loading_config={"model_id": args.name, "model_source": args.model_dir},
        accelerator_config={"kind": "cpu"} if args.cpu else None,
        engine_kwargs=json.loads(args.engine_args),
        deployment_config={"num_replicas": 1, "max_ongoing_requests": args.max_ongoing_requests},
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.run(build_openai_app({"llm_configs": [config]}), name="rayllm", route_prefix="/")
        runtime.wait_for_ok(f"http://127.0.0.1:{args.port}/v1/models", 900)
        metrics_port = ray._private.worker.global_worker.node.metrics_export_port
        print(f"[ray-serve-llm] ready; metrics on port {metrics_port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
