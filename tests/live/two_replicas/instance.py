"""The instance the tests of this package share: `slmserve serve` of the embedded model on two engine
replicas (one core each, direct data plane), with an in-flight bound across both and LoRA adapters
the tests make, some of them broken, served from a directory. One start serves the routing tests
and the LoRA tests (conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from services.haproxy.maps import HAProxyMap
from services.haproxy.wrapper import ADAPTERS_MAP
from services.runtime import haproxy_state_dir
from testkit.serving import ServerProcess

MODEL = "smollm2-135m-instruct"
BOUND = 12  # requests in flight for the model, across both replicas (issue 16 item 6)
ADAPTERS = {"alpha-r8": 8, "beta-r16": 16, "gamma-r8": 8}  # three, and room for two per engine
BROKEN = {"wrong-base", "no-weights", "rank-64", "garbage"}
REFRESH_S = 2


def two_replicas_with_adapters(adapters_dir: Path):
    def change(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["deployment"]["num_replicas"] = 2
        entry["max_in_flight"] = BOUND
        entry["env"] = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # one core each
        entry["lora"] = {
            "adapters_dir": str(adapters_dir),
            "max_loras": 2,
            "max_lora_rank": 16,
            "max_cpu_loras": 2,
            "refresh_s": REFRESH_S,
        }

    return change


def wait_until(condition, timeout_s: float = 6 * REFRESH_S + 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the refresh period"
        time.sleep(0.5)


def placed_by_haproxy(server: ServerProcess) -> set[str]:
    """The adapters the running HAProxy's map sends straight to an engine replica, read on its admin
    socket: a request to find out would load the adapter on a replica before the affinity test."""
    state = haproxy_state_dir(urlsplit(server.base_url).port or 0)
    placed: set[str] = set()
    for socket_path in state.glob("*/admin.sock"):
        try:
            placed |= HAProxyMap(socket_path.parent / ADAPTERS_MAP, socket_path).loaded().keys()
        except ConnectionRefusedError:  # left by an earlier instance on this port (another Ray node id)
            continue
    return placed
