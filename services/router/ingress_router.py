"""The ingress request router of a direct-mode application.

Ray Serve's HAProxy asks it, once per POST and beside the stream, which engine replica takes the
request (`POST /internal/route`), then forwards the request's bytes straight to that replica's own
HTTP server. Tokens never pass through this process. The choice is made by the engine
deployment's Serve request router, through a handle made once at start. This is a pick without
reservation (`_reserve=False`: the request itself goes out through HAProxy), in which Ray takes the
first replica the policy ranks first without probing queue lengths.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("slmserve.router")
# HAProxy waits this long for the route (RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_TIMEOUT_S, 5 s);
# answer before it with a clear 503 instead of its timeout.
CHOOSE_TIMEOUT_S = 4.0


class IngressRouter:
    """Wrapped by `serve.ingress()` and `serve.deployment` in services.app."""

    def __init__(self, engine: DeploymentHandle) -> None:
        self.engine = engine
        self.engine._init()  # the handle's request router starts now, not on the first request

    async def choose(self) -> dict[str, object]:
        """`{"host", "port", "replica_id"}` of the replica that should take the next request."""
        async with asyncio.timeout(CHOOSE_TIMEOUT_S), self.engine.choose_replica(_reserve=False) as selection:
            replica = selection._replica
            endpoint = replica.backend_http_endpoint
            if endpoint is None:
                raise RuntimeError(f"replica {selection.replica_id} has no HTTP endpoint yet")
            host, port = endpoint
            return {"host": host, "port": port, "replica_id": replica.replica_id.to_full_id_str()}

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/internal/route")
        async def route() -> JSONResponse:
            try:
                return JSONResponse(await self.choose())
            except (TimeoutError, RuntimeError) as error:  # HAProxy answers any non-200 with a 503
                logger.warning("no engine replica to route to: %s", error)
                return JSONResponse({"detail": str(error) or "no engine replica available"}, status_code=503)

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        return app
