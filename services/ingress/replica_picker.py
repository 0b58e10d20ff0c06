"""The ingress request router of a direct-mode application.

Ray Serve's HAProxy asks it, once per POST and beside the stream, which engine replica takes the
request (`POST /internal/route`), then forwards the request's bytes straight to that replica's own
HTTP server. Tokens never pass through this process. The choice is the engine deployment's request
router (services/routing/policies.py, from the catalog's `routing:`), through a handle made once at
start. It is a pick without reservation (`_reserve=False`: the request itself goes out through
HAProxy), in which Ray takes the replica the policy ranks first without probing queue lengths; the
policy's own load accounting stands in for that.

HAProxy sends the request body along when the policy needs it (prefix-affinity; see
services/runtime.py and the chart for `RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY`), and the
session header under the name Ray Serve is told (`RAY_SERVE_SESSION_ID_HEADER_KEY`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from ray.serve.handle import DeploymentHandle

from services.core import platform, ray_compat
from services.core.logs import show_platform_logs
from services.core.timing import CHOOSE_TIMEOUT_S
from services.metrics.records import RecordBuffer
from services.routing import arrivals, decisions
from services.routing.session import with_session

logger = logging.getLogger("slmserve.router")


def routing_body(raw: bytes) -> dict[str, Any] | None:
    """The forwarded OpenAI body, or None (not forwarded, truncated, not JSON, hostile nesting)."""
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


class ReplicaPicker:
    """Wrapped by `serve.ingress()` and `serve.deployment` in services.app."""

    def __init__(self, engine: DeploymentHandle, platform_app: str, session_header: str) -> None:
        show_platform_logs()
        self.engine = engine
        ray_compat.start_request_router(self.engine)
        self.session_header = session_header.lower()
        arrivals.picker = uuid.uuid4().hex[:12]  # named in each request it places (services/routing/arrivals.py)
        hub = platform.handle(platform.METRICS_HUB, platform_app)
        self.records = RecordBuffer(hub, collectors=(decisions.drain,))

    async def choose(self, body: dict[str, Any] | None, session_id: str | None) -> dict[str, object]:
        """`{"host", "port", "replica_id"}` of the replica that should take this request, and the header
        HAProxy adds to it that names this picker (`request_headers`)."""
        handle = with_session(self.engine, session_id)
        arguments = (body,) if body is not None else ()
        async with asyncio.timeout(CHOOSE_TIMEOUT_S), ray_compat.chosen_replica(handle, *arguments) as replica:
            return {
                "host": replica.host,
                "port": replica.port,
                "replica_id": replica.replica_id,
                "request_headers": {arrivals.HEADER: arrivals.picker},
            }

    async def route(self, raw_body: bytes, session_id: str | None) -> tuple[int, bytes]:
        """`/internal/route`: status and JSON body. HAProxy answers any non-200 with a 503."""
        self.records.start()
        started = time.perf_counter()
        try:
            chosen = await self.choose(routing_body(raw_body), session_id)
        except (TimeoutError, RuntimeError) as error:
            logger.warning("no engine replica to route to: %s", error)
            return 503, json.dumps({"detail": str(error) or "no engine replica available"}).encode()
        decisions.timed(self.engine.deployment_name, time.perf_counter() - started)
        return 200, json.dumps(chosen).encode()

    async def __serve_build_asgi_app__(self) -> RouteApp:
        return RouteApp(self)


class RouteApp:
    """The picker's two routes as a bare ASGI app: HAProxy calls it once per request, and FastAPI's
    routing and response layers were a fifth of its CPU per decision (loadtests/picker_bench.py)."""

    def __init__(self, picker: ReplicaPicker) -> None:
        self.picker = picker
        self.session_header = picker.session_header.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # Serve runs the app's lifespan through uvicorn's
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path, root = scope["method"], scope["path"], scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        if method == "POST" and path == "/internal/route":
            session = next((value.decode() for name, value in scope["headers"] if name == self.session_header), None)
            status, body = await self.picker.route(await _body(receive), session)
        elif method == "GET" and path == "/health":
            status, body = 200, b'{"status":"ok"}'
        else:
            status, body = 404, b'{"detail":"Not Found"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
