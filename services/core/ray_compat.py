"""Every call into Ray's private API, in one module (as services/engine/vllm_compat.py is for vLLM).

Ray 2.60 gives no public way to do these; when Ray moves one, this module changes and nothing else
(tests/unit/test_layers.py keeps every other module off Ray's private names).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

# Ray is imported inside each function: this module is in the lowest layer, and the CLI answers
# `--help` or a port conflict without paying for Ray's import.


def serve_constants() -> ModuleType:
    """Serve's settings as Ray read them from the environment at import (HAProxy on, its paths)."""
    import importlib

    return importlib.import_module("ray.serve._private.constants")


def haproxy_enabled() -> bool:
    """Whether Serve's HAProxy ingress is on in this process."""
    return bool(serve_constants().RAY_SERVE_ENABLE_HA_PROXY)


def serve_details() -> dict[str, Any]:
    """The controller's view of every application (targets included), as `serve status` reads it."""
    from ray.serve.context import _get_global_client

    details: dict[str, Any] = _get_global_client().get_serve_details()
    return details


def serve_request_id() -> str | None:
    """The id Serve's ingress gave the current request (the client's X-Request-Id when it sent one)."""
    from ray import serve

    request_id: str | None = serve.context._get_serve_request_context().request_id
    return request_id


def run_application(app: Any, name: str, route_prefix: str | None, *, wait: bool) -> None:
    """`serve.run` without, when `wait` is off, its wait until every replica is up (so readiness can
    report 503 while engines load)."""
    from ray import serve

    serve._run(app, name=name, route_prefix=route_prefix, _blocking=wait)


def delete_application(name: str) -> None:
    """`serve.delete` without its wait: Serve stops the application's replicas gracefully."""
    from ray import serve

    serve.delete(name, _blocking=False)


def handle_by_name(deployment: str, app: str) -> DeploymentHandle:
    """A handle to another application's deployment, not checked at once: the applications are
    deployed together or one after another, and a handle resolves its replicas when first used."""
    from ray import serve

    return serve.get_deployment_handle(deployment, app, _check_exists=False)


def with_ingress_request_router(engine: Any, router: Any) -> Any:
    """The engine application whose HAProxy asks `router`'s `/internal/route` for each request's replica."""
    return engine._with_ingress_request_router(router)


def start_request_router(handle: DeploymentHandle) -> None:
    """Start the handle's request router now, not on the first request."""
    handle._init()


@dataclass(frozen=True)
class ReplicaEndpoint:
    host: str
    port: int
    replica_id: str


@asynccontextmanager
async def chosen_replica(handle: DeploymentHandle, *arguments: Any) -> AsyncIterator[ReplicaEndpoint]:
    """The replica `handle`'s request router picks for a request with `arguments`, without reserving
    a slot on it (HAProxy sends the request there itself)."""
    async with handle.choose_replica(*arguments, _reserve=False) as selection:
        replica = selection._replica
        if replica.backend_http_endpoint is None:
            raise RuntimeError(f"replica {selection.replica_id} has no HTTP endpoint yet")
        host, port = replica.backend_http_endpoint
        yield ReplicaEndpoint(host, port, replica.replica_id.to_full_id_str())


def alive_actors() -> dict[str, dict[str, Any]]:
    """Ray's GCS actor table, live actors only (blocking)."""
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors(actor_state_name="ALIVE")
    return table


def drain_node(gcs_address: str, node_id: str, message: str, deadline_ms: int) -> tuple[bool, str]:
    """Ask the GCS to drain a node, as Ray's autoscaler v2 does before removing one: (accepted, refusal)."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled; no stub
    from ray.core.generated import autoscaler_pb2

    accepted, refusal = GcsClient(address=gcs_address).drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), message, deadline_ms
    )
    return bool(accepted), str(refusal)
