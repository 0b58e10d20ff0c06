"""Bare `vllm serve` of one model with given engine arguments: the baseline of the benchmarks and the
oracle of the conformance test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.engine import vllm_plugin
from services.runtime import wait_for_ok

ROOT = Path(__file__).resolve().parents[1]
SLMSERVE_PLUGIN = vllm_plugin.__name__  # the module pyproject.toml's vllm.general_plugins entry point names


def vllm_plugins_but_slmserves() -> str:
    """VLLM_PLUGINS naming every installed vLLM general plugin but slmserve's: vLLM loads all of them
    by default, and bare vLLM is measured as a user's would run, with vLLM's own only."""
    from importlib.metadata import entry_points

    plugins = entry_points(group="vllm.general_plugins")
    return ",".join(plugin.name for plugin in plugins if plugin.module != SLMSERVE_PLUGIN)


def start_bare_vllm(
    model_dir: str, served_name: str, engine_args: dict, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`env`: what the catalog sets for the model's engine (OMP threads and binding on a CPU node),
    so that both run the engine alike. slmserve's vLLM plugin stays out (vllm_plugins_but_slmserves)."""
    flags = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [] if value is False else [flag, str(value)]
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *flags,
    ]
    # A session of its own, as `slmserve serve` gets (testkit/serving.py) and as a `vllm serve` started
    # from its own shell or unit has: Linux shares the CPU between sessions (autogroup) before it
    # weighs their processes, so a server in the measuring client's session competes differently.
    return subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "VLLM_PLUGINS": vllm_plugins_but_slmserves(), **(env or {})},
        start_new_session=True,
    )


@contextmanager
def serving_bare_vllm(
    model_dir: str,
    served_name: str,
    engine_args: dict,
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 900,
) -> Iterator[subprocess.Popen]:
    """Bare vLLM started and ready (`/health` answers 200) for the block; stopped when it ends,
    however it ends. A server that exits while starting fails the wait at once with its log's tail."""
    process = start_bare_vllm(model_dir, served_name, engine_args, port, log, env)
    try:
        wait_for_ok(
            f"http://127.0.0.1:{port}/health",
            ready_timeout_s,
            failed=lambda: log.read_text()[-2000:] if process.poll() is not None else "",
        )
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Terminate, and kill what does not end within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
