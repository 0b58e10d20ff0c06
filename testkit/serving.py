"""One `slmserve serve` instance in a subprocess, on its own port and Ray, for tests and benchmarks
that need a catalog of their own next to (or instead of) the test session's application."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from services import runtime
from services.core.settings import resolve_catalog_path
from services.haproxy.maps import admin_command
from testkit.exposition import Exposition

Catalog = dict[str, Any]


def catalog_variant(name: str, change: Callable[[Catalog], None]) -> Path:
    """A shipped catalog with `change` applied, written to a temporary file."""
    catalog = yaml.safe_load(resolve_catalog_path(name).read_text())
    change(catalog)
    path = Path(tempfile.mkdtemp(prefix="slmserve-catalog-")) / f"{Path(name).stem}-variant.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log: Path


def running_replicas(base_url: str, api_key: str = "") -> dict[str, float]:
    """Model name -> RUNNING engine replicas, as the app's /metrics reports them."""
    metrics = Exposition.fetch(f"{base_url}/metrics", api_key)
    return metrics.by("model_name", "slmserve_model_replicas", state="RUNNING")


def wait_for_replicas(base_url: str, count: int, timeout_s: float, api_key: str = "") -> None:
    """Until every model has `count` RUNNING engine replicas (readiness needs only one: a model
    with one loaded replica serves, while the others may still be loading)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = running_replicas(base_url, api_key)
        if running and all(value >= count for value in running.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"{base_url}: not {count} running replicas after {timeout_s:.0f}s")


def until(condition: Callable[[], object], timeout_s: float, period_s: float = 0.5) -> float | None:
    """Seconds until `condition()` holds; None if it did not within `timeout_s`. A condition that
    raises has not held yet (a probe that errors is a probe that has not recovered)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(period_s)
    return None


def haproxy_servers_up(port: int, backend: str) -> int | None:
    """The servers an instance's HAProxy holds UP in one backend (backups aside), read through its
    admin socket (services/runtime.py puts it under slmserve-PORT/<node>/); None where none answers."""
    for path in Path(tempfile.gettempdir()).glob(f"slmserve-{port}/*/admin.sock"):
        try:
            lines = admin_command(path, "show stat").splitlines()
        except OSError:
            continue
        if not lines or not lines[0].startswith("# "):
            continue
        rows = csv.DictReader([lines[0][2:], *lines[1:]])
        return sum(
            1
            for row in rows
            if row.get("pxname") == backend
            and row.get("svname") not in ("FRONTEND", "BACKEND")
            and (row.get("status") or "").startswith("UP")
            and row.get("bck") == "0"
        )
    return None


def wait_for_haproxy(base_url: str, catalog: str | Path, replicas: int, timeout_s: float = 30) -> None:
    """Until HAProxy's config lists `replicas` servers for every model's application (direct plane):
    Serve's controller reports a new replica RUNNING, and the ReplicaPicker may choose it, a moment
    before HAProxy has reloaded with it, and a choice HAProxy cannot follow falls to its own balancing.
    Not fatal: past the timeout the test runs and says what it saw."""
    from ray.serve._private.haproxy import HAProxyManager

    from services.core.catalog import load_catalog
    from services.core.layout import layout

    parsed = load_catalog(resolve_catalog_path(str(catalog)))
    if parsed.data_plane != "direct":
        return
    port = int(base_url.rsplit(":", 1)[1])
    apps = layout(parsed, "slmserve").model_apps.values()
    backends = [HAProxyManager.get_safe_name(f"http-{app.app_name}") for app in apps]  # Ray's backend names
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {backend: haproxy_servers_up(port, backend) for backend in backends}
        if all(count is not None and count >= replicas for count in seen.values()):
            return
        if time.monotonic() > deadline:
            print(f"[serving] HAProxy's servers after {timeout_s:.0f}s: {seen}", flush=True)
            return
        time.sleep(0.5)


def session_homes(
    base_url: str, model: str, header: str, sessions: list[str], probes: int = 2, api_key: str = ""
) -> dict[str, set[str]]:
    """The replicas that answered each session's `probes` short requests (prompts that share no
    prefix, so the session header decides where a router places them). A session seen on more than
    one replica means HAProxy did not follow the router's choice: a replica that has just started is
    known to the router a moment before HAProxy's config lists it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    homes: dict[str, set[str]] = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        for session in sessions:
            for probe in range(probes):
                messages = [{"role": "user", "content": f"{session} {probe}"}]
                body = {"model": model, "max_tokens": 1, "messages": messages}
                response = client.post(
                    f"{base_url}/v1/chat/completions", json=body, headers={**headers, header: session}
                )
                response.raise_for_status()
                homes.setdefault(session, set()).add(response.headers.get("x-slmserve-replica", ""))
    return homes


def _exited(process: subprocess.Popen[bytes], log: Path) -> str:
    """Why `slmserve serve` ended before it was ready ("" while it runs): its exit code and last line."""
    if process.poll() is None:
        return ""
    said = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("[slmserve] ")]
    last = next((line for line in reversed(said) if line != "[slmserve] shutting down"), "(nothing said)")
    return f"slmserve serve exited with {process.returncode}: {last[:1000]}"


@contextmanager
def serving(
    catalog: str | Path,
    *,
    api_keys: str = "",
    ready_timeout_s: float = 900,
    replicas: int = 1,
    on_start: Callable[[str], None] | None = None,
) -> Iterator[ServerProcess]:
    """`slmserve serve --catalog CATALOG` on a free port; yields once it is ready with `replicas`
    engine replicas per model, stops it at once (Ctrl-C twice, then a kill) afterwards.
    `on_start(base_url)` runs right after the start, before the wait."""
    port = runtime.free_ports(1)[0]
    base_url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="slmserve-serve-")) / "serve.log"
    env = {key: value for key, value in os.environ.items() if key not in ("SLMSERVE_API_KEYS", "RAY_ADDRESS")}
    env |= {"SLMSERVE_API_KEYS": api_keys, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--catalog", str(catalog), "--port", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        if on_start is not None:
            on_start(base_url)
        runtime.wait_until_ready(base_url, ready_timeout_s, failed=lambda: _exited(process, log))
        if replicas > 1:
            key = api_keys.split(",")[0].split(":")[-1] if api_keys else ""
            wait_for_replicas(base_url, replicas, ready_timeout_s, key)
            wait_for_haproxy(base_url, catalog, replicas)
        yield ServerProcess(base_url, process, log)
    except Exception:
        print(log.read_text()[-5000:])
        raise
    finally:
        process.send_signal(signal.SIGINT)  # a stop that lets streams finish (none are left here)...
        time.sleep(1)
        process.send_signal(signal.SIGINT)  # ...and at once: Serve and Ray stopped
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def wait_until_haproxy_follows_the_router(base_url: str, model: str, timeout_s: float = 90) -> None:
    """Until sessions stay on their replica and spread over both (`session_homes`): HAProxy lists a new
    replica a moment before it follows the ReplicaPicker's choices of it, and until then a request can
    land on the other replica (the routing and LoRA modules' intermittent failures)."""
    deadline = time.monotonic() + timeout_s
    for attempt in range(1_000):
        homes = session_homes(base_url, model, "X-Session-Id", [f"warm-{attempt}-{i}" for i in range(4)])
        if all(len(replicas) == 1 for replicas in homes.values()) and len(set().union(*homes.values())) == 2:
            return
        assert time.monotonic() < deadline, f"HAProxy does not follow the router's choices: {homes}"
