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
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.serve.handle import DeploymentHandle

from services.core import platform, ray_compat
from services.core.logs import show_platform_logs
from services.core.timing import CHOOSE_TIMEOUT_S
from services.metrics.records import RecordBuffer
from services.routing import decisions
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
        hub = platform.handle(platform.METRICS_HUB, platform_app)
        self.records = RecordBuffer(hub, collectors=(decisions.drain,))

    async def choose(self, body: dict[str, Any] | None, session_id: str | None) -> dict[str, object]:
        """`{"host", "port", "replica_id"}` of the replica that should take this request."""
        handle = with_session(self.engine, session_id)
        arguments = (body,) if body is not None else ()
        async with asyncio.timeout(CHOOSE_TIMEOUT_S), ray_compat.chosen_replica(handle, *arguments) as replica:
            return {"host": replica.host, "port": replica.port, "replica_id": replica.replica_id}

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/internal/route")
        async def route(request: Request) -> JSONResponse:
            self.records.start()
            body = routing_body(await request.body())
            started = time.perf_counter()
            try:
                chosen = await self.choose(body, request.headers.get(self.session_header))
                decisions.timed(self.engine.deployment_name, time.perf_counter() - started)
                return JSONResponse(chosen)
            except (TimeoutError, RuntimeError) as error:  # HAProxy answers any non-200 with a 503
                logger.warning("no engine replica to route to: %s", error)
                return JSONResponse({"detail": str(error) or "no engine replica available"}, status_code=503)

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        return app
