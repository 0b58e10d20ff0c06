"""Start a local Ray + Serve and deploy a catalog on it (what `slmserve serve` and tests use)."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.core import ray_compat
from services.core.catalog import Catalog
from services.core.layout import layout, model_routes
from services.core.settings import Settings
from services.core.timing import (
    HAPROXY_STOP_WAIT_S,
    LOCAL_CONTROL_LOOP_INTERVAL_S,
    PROXY_HEALTH_CHECK_PERIOD_S,
    RAY_START_ATTEMPTS,
    RAY_START_BACKOFF_S,
    ROUTER_START_TIMEOUT_S,
    STOP_MARGIN_S,
)
from services.engine import cpu_affinity
from services.haproxy.rules import BUFFER_BYTES, RETRY_ON
from services.haproxy.wrapper import ROUTES_ENV, wrapper_path
from services.models import needs_hub


def local_environment(settings: Settings, catalog: Catalog) -> dict[str, str]:
    """Environment every Ray worker inherits: caches inside cache_dir, loopback only, no hub
    access unless a catalog entry really names a hub id."""
    cache = settings.cache_dir
    env = {
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_USE_AOT_COMPILE": "0",  # lets the compile cache be reused between starts
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLMSERVE_CACHE_DIR": str(cache),
    }
    if not any(needs_hub(entry.source) for entry in catalog.models):
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    return env


# Ports an instance takes for itself come from here: below Ray Serve's direct-ingress replica ports
# (30000-31000), above Ray's worker ports (10002-19999), and outside the kernel's ephemeral range
# (32768-60999), where a port seen free would soon be any outgoing connection's or Ray's own.
INSTANCE_PORTS = range(20000, 30000)


# Ports this process handed out: none is bound until its user starts, so a later call would see it free
# (a local cluster's Ray ports and its HAProxy's stats port once drew the same one).
_handed_out: set[int] = set()


def free_ports(count: int, *, candidates: range = INSTANCE_PORTS) -> list[int]:
    """`count` different ports that nothing listens on, on loopback or any address, drawn at random
    from `candidates` so that instances started side by side rarely try the same one, and never one
    this process handed out before."""
    chosen: list[int] = []
    for port in random.sample(candidates, len(candidates)):
        if port not in _handed_out and _bindable(port):
            chosen.append(port)
            if len(chosen) == count:
                _handed_out.update(chosen)
                return chosen
    raise RuntimeError(f"fewer than {count} free ports in {candidates.start}-{candidates.stop - 1}")


def _bindable(port: int, addresses: tuple[str, ...] = ("127.0.0.1", "0.0.0.0")) -> bool:
    for address in addresses:  # HAProxy binds the wildcard, uvicorn loopback
        with socket.socket() as sock:
            # As HAProxy binds: a listener refuses it, the closed connections of an instance that just
            # ended (TIME_WAIT, a minute) do not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def control_environment() -> dict[str, str]:
    """Serve's controller on a local Ray shares the engine's cores: a slower loop (services/core/timing.py).

    Ray's workers (the engine replica, vLLM's processes, HAProxy) keep Ray's nice 15. At nice 0, tried
    here, the engines' busy loops starved everything else on a 2-core machine at the same priority:
    16 concurrent clients on the same machine got their requests out only as earlier streams ended;
    with the platform's processes lowered to 10 beside it, throughput rose 5-7 % but a client's
    inter-token p95 grew 1.2-2.3x, and lowering the platform to 19 alone changed nothing measurable
    (`loadtests/priority.py`, docs/benchmarks.md)."""
    return {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": str(LOCAL_CONTROL_LOOP_INTERVAL_S)}


def routing_environment(catalog: Catalog, app_name: str) -> dict[str, str]:
    """What Ray Serve's HAProxy needs to know of the catalog's routing (read by Ray at start): each
    served name's application (for the wrapper's model rule, services/haproxy), the session header's
    name, and whether to send request bodies to the ReplicaPickers (`ModelEntry.router_reads_body`).
    The switch is Ray-wide: on when any model's router reads bodies."""
    direct = catalog.data_plane == "direct"
    reads_body = any(entry.router_reads_body for entry in catalog.models)
    return {
        "RAY_SERVE_SESSION_ID_HEADER_KEY": catalog.edge.session_header.lower(),
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1" if direct and reads_body else "0",
        ROUTES_ENV: json.dumps(model_routes(catalog, app_name)),
    }


def haproxy_state_dir(port: int) -> Path:
    """Where a local instance's HAProxy keeps its config, maps and admin socket (under a node id)."""
    return Path(tempfile.gettempdir()) / f"slmserve-{port}"


def stop_left_over_haproxy(port: int) -> list[int]:
    """HAProxy processes left by a dead local instance on `port` (their config in its state directory,
    their HAProxy manager gone): stopped, with one line each. An instance's HAProxy now ends with its
    manager (services/haproxy/wrapper.py); this clears one left by a start before that, or by a
    platform without Linux's parent-death signal. A live instance's HAProxy is never touched."""
    state = f"{haproxy_state_dir(port)}/".encode()
    stopped = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        ours = Path(command[0].decode(errors="replace")).name == "haproxy" and any(
            part.startswith(state) for part in command
        )
        if ours and not parent_command.startswith(b"ray::"):  # its manager is gone: nobody serves through it
            print(f"[slmserve] stopping HAProxy {entry.name}, left on port {port} by an instance that died", flush=True)
            os.kill(int(entry.name), signal.SIGTERM)
            stopped.append(int(entry.name))
    return stopped


def ingress_environment(settings: Settings) -> dict[str, str]:
    """Ray Serve's ingress mode for a local Ray. With HAProxy, HAProxy listens on host:port and
    forwards each request straight to a router replica's own HTTP server, so a streamed token
    crosses one Python process fewer than through Serve's proxy actor. HAProxy's files and its
    stats and metrics ports are Ray-wide defaults; give each local instance its own (the port
    keeps the directory unique and short: Ray adds a node id, HAProxy takes 97-byte socket paths)."""
    health = {"RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": str(PROXY_HEALTH_CHECK_PERIOD_S)}
    if settings.ingress != "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **health}
    state = haproxy_state_dir(settings.port)
    metrics_port, stats_port, fallback_http_port, fallback_grpc_port = free_ports(4)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # Ray starts HAProxy through slmserve's wrapper, which adds the model rule to every config
        "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper_path(),
        "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(BUFFER_BYTES),
        "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state / "metrics.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        # HAProxy's backup server is Serve's proxy actor on this port (8500 by default): two local
        # instances on the default would forward to each other's.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http_port),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc_port),
        # A stopping router replica keeps serving this long so that load balancers notice; the
        # local HAProxy is told at once, so the 30 s default would only slow every shutdown.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **health,
    }


def start_local(settings: Settings, catalog: Catalog, *, wait: bool = False, direct_engine: type | None = None) -> None:
    """Start Ray on this machine, Serve's HTTP ingress on host:port, and deploy the catalog.

    With wait=False the call returns once the application answers HTTP. In routed mode that is
    the router, within seconds: it reports 503 on readiness (and OpenAI-shaped errors on every
    route) while engines still load. In direct mode the engine replicas are the HTTP servers, so
    that is once the engine has loaded; until then Serve holds requests (as a `vllm serve` that
    is still loading accepts none).
    """
    prepare_environment(settings, catalog)
    Path(settings.cache_dir).mkdir(parents=True, exist_ok=True)
    local_ray = settings.ray_address == "local"
    if local_ray and not _bindable(settings.port, (settings.host,)) and stop_left_over_haproxy(settings.port):
        time.sleep(HAPROXY_STOP_WAIT_S)
    if local_ray and not _bindable(settings.port, (settings.host,)):
        raise LocalStartFailed(
            f"port {settings.port} on {settings.host} is in use by another process: "
            "choose another with --port (or SLMSERVE_PORT)"
        )

    import ray
    from ray import serve

    if not ray.is_initialized():
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if local_ray:
            init_kwargs |= {"num_cpus": local_ray_cpus(settings, catalog), "_node_ip_address": "127.0.0.1"}
            with platform_cores(catalog):
                _init_local_ray({"address": "local", **init_kwargs})
        else:
            ray.init(address=settings.ray_address, **init_kwargs)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    _deploy(settings, catalog, wait=wait, direct_engine=direct_engine)
    wait_for_ok(
        f"{local_base_url(settings)}/v1/health/live",
        ROUTER_START_TIMEOUT_S,
        failed=lambda: deploy_failures(catalog, settings.app_name),
    )


_prepared_port: int | None = None


def _platform_cpus_of(catalog: Catalog) -> set[int] | None:
    """Where a local run of a CPU catalog keeps its own processes: the core vLLM's CPU worker leaves
    free (services/engine/cpu_affinity.py). None for a GPU catalog or a machine of one core."""
    if any(entry.deployment.gpus_per_replica for entry in catalog.models) or not hasattr(os, "sched_getaffinity"):
        return None
    return cpu_affinity.reserved_cpus(os.sched_getaffinity(0))


@contextmanager
def platform_cores(catalog: Catalog) -> Iterator[None]:
    """Around the start of a local Ray: every Ray process it starts inherits the platform's cores,
    and the engine replicas learn them (cpu_affinity.place_engine_replica)."""
    platform = _platform_cpus_of(catalog)
    if platform is None:
        os.environ.pop(cpu_affinity.PLATFORM_CPUS_ENV, None)
    else:
        os.environ[cpu_affinity.PLATFORM_CPUS_ENV] = cpu_affinity.env_value(platform)
    with cpu_affinity.on_cpus(platform):
        yield


def prepare_environment(settings: Settings, catalog: Catalog) -> None:
    """The switches Ray and Serve read at import, in this process and its children: to be set
    before anything imports Ray (start_local does it first; a caller that must import Ray-using code
    before start_local calls it earlier)."""
    global _prepared_port
    for key, value in local_environment(settings, catalog).items():
        os.environ.setdefault(key, value)
    if settings.ray_address == "local" and _prepared_port != settings.port:  # its free ports are chosen once
        _prepared_port = settings.port
        os.environ.update(ingress_environment(settings) | routing_environment(catalog, settings.app_name))
        for key, value in control_environment().items():
            os.environ.setdefault(key, value)  # a value set by hand wins


def _deploy(settings: Settings, catalog: Catalog, *, wait: bool, direct_engine: type | None = None) -> None:
    from services.app import build_applications

    apps = build_applications(
        catalog, app_name=settings.app_name, cache_dir=settings.cache_dir, direct_engine=direct_engine
    )
    # The model applications first, the platform last: HAProxy places a model's requests as soon as
    # its application exists, and the platform answers everything else from the moment it is up.
    for app in [*apps[1:], apps[0]]:
        ray_compat.run_application(app.application, app.name, app.route_prefix, wait=wait)


def apply_catalog(settings: Settings, running: Catalog, changed: Catalog) -> list[str]:
    """A changed catalog on the running instance, as the chart's serveConfigV2 change does on a
    cluster: Serve rolls each application whose deployments changed, a replica at a time, stopping
    old replicas gracefully (their streams finish within graceful_shutdown_timeout_s); a model added
    gets its application; a removed model's application is deleted once the platform, which then
    answers 404 for it, has the new catalog (serve.delete lets its in-flight requests finish).
    Returns the applications deleted."""
    _deploy(settings, changed, wait=False)
    kept = set(layout(changed, settings.app_name).app_names())
    gone = [app for app in layout(running, settings.app_name).app_names() if app not in kept]
    for app in gone:
        ray_compat.delete_application(app)
    return gone


class LocalStartFailed(RuntimeError):
    """This machine could not start the local Ray or take the port; the message says what to do."""


def _init_local_ray(init_kwargs: dict[str, Any]) -> None:
    """ray.init for a private local Ray, tried again where trying helps: Ray gives a raylet 30 s to
    register (hard-coded), which a busy machine can miss, and each try starts fresh processes. A
    start that keeps failing ends in LocalStartFailed, one line, never Ray's traceback."""
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as error:  # Ray raises a bare Exception for the registration timeout
            ray.shutdown()  # stops what this try started
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            if attempt == RAY_START_ATTEMPTS:
                load = os.getloadavg()[0]
                raise LocalStartFailed(
                    f"the local Ray did not start after {attempt} tries ({reason}); load average {load:.1f} on "
                    f"{os.cpu_count()} cores: retry when the machine is quieter, or stop other Ray instances"
                ) from error
            print(f"[slmserve] the local Ray did not start ({reason}); trying again", flush=True)
            time.sleep(RAY_START_BACKOFF_S * attempt)


def local_ray_cpus(settings: Settings, catalog: Catalog) -> int:
    """Logical CPUs a local Ray advertises: the setting, raised to what the catalog's deployments ask
    for. Ray's CPUs are scheduling tokens; fewer than the catalog needs would leave a replica pending
    forever with nothing but a readiness timeout to show for it."""
    needed = math.ceil(catalog.cpus_needed)
    if needed > settings.ray_num_cpus:
        print(
            f"[slmserve] the local Ray advertises {needed} logical CPUs (ray_num_cpus {settings.ray_num_cpus}): "
            "what the catalog's deployments ask for",
            flush=True,
        )
    return max(settings.ray_num_cpus, needed)


def local_base_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


class DeployFailed(RuntimeError):
    """What is being waited for cannot come: Serve gave up on a deployment, or the server exited."""


def deploy_failures(catalog: Catalog, app_name: str) -> str:
    """Serve's message for each deployment of the catalog's applications that it gave up on ("" while
    none has): a replica whose start keeps failing ends DEPLOY_FAILED, and readiness alone would
    wait on it."""
    from services.core.serve_status import read_deployment_states

    failures = [
        f"{name}: {_failure_summary(state.message) or 'DEPLOY_FAILED'}"
        for app in layout(catalog, app_name).app_names()
        for name, state in read_deployment_states(app).items()
        if state.status == "DEPLOY_FAILED"
    ]
    return f"Serve gave up on {'; '.join(failures)}" if failures else ""


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*:")


def _failure_summary(message: str) -> str:
    """Serve's first line, then the traceback's last exception line and the line after it (the
    exception the constructor raised, and pydantic's reason where it is a ValidationError)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    raised = [index for index, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    cause = lines[raised[-1] : raised[-1] + 2] if raised else lines[-1:]
    return " ... ".join(lines[:1] + [line[:300] for line in cause if line != lines[0]])


def wait_for_ok(url: str, timeout_s: float, *, progress: str = "", failed: Callable[[], str] | None = None) -> bytes:
    """Poll `url` until it answers 200; return the body. Raises TimeoutError with the last answer.
    With `progress`, print that line (and the last answer) every 10 s while waiting. `failed` is
    asked every 10 s too: a non-empty answer raises DeployFailed at once."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    next_note = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            last = error.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        if time.monotonic() >= next_note:
            if progress:
                print(f"[slmserve] {progress} ({last.strip()[:120]})", flush=True)
            if failed is not None and (reason := failed()):
                raise DeployFailed(reason)
            next_note = time.monotonic() + 10
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s: {last}")


def wait_until_ready(
    base_url: str, timeout_s: float, *, progress: bool = False, failed: Callable[[], str] | None = None
) -> dict[str, Any]:
    """Poll /v1/health/ready until 200; return its body. Raises TimeoutError, or DeployFailed as
    soon as `failed()` names a reason (`deploy_failures` for the Ray driver itself)."""
    body = wait_for_ok(
        f"{base_url}/v1/health/ready",
        timeout_s,
        progress="waiting for engines to load..." if progress else "",
        failed=failed,
    )
    answer: dict[str, Any] = json.loads(body)
    return answer


def stop_gracefully(settings: Settings, catalog: Catalog) -> None:
    """Every application deleted, then waited for, as a stopping pod's drain does: HAProxy takes no
    new request for them, and each replica lets its streams finish within its
    graceful_shutdown_timeout_s. Killing Serve's proxy first, as `serve.shutdown` does, would cut them."""
    from ray import serve

    apps = set(layout(catalog, settings.app_name).app_names())
    for app in apps:
        ray_compat.delete_application(app)
    grace_s = max(options.graceful_shutdown_timeout_s for options in catalog.deployments()) + STOP_MARGIN_S
    deadline = time.monotonic() + grace_s
    while apps & set(serve.status().applications) and time.monotonic() < deadline:
        time.sleep(0.5)


def shutdown() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
