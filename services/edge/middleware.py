"""The edge middleware, as plain ASGI: Starlette's BaseHTTPMiddleware puts an extra task and memory
stream between every streamed chunk and the socket; this passes messages straight through. It
checks API keys, counts requests by route template and status, and names the kind of process that
answered in `X-Slmserve-Served-By` (`engine` in direct mode, `router` in routed mode) and, in direct
mode, the engine replica in `X-Slmserve-Replica`."""

from __future__ import annotations

from typing import Any

from services.core.errors import Code, error_body
from services.core.layout import INTERNAL_PREFIX
from services.metrics.records import HTTPRecord

# Routes outside /v1/ that reach a model: vLLM's tokenizer routes and SageMaker's /invocations.
MODEL_ROUTES_OUTSIDE_V1 = frozenset({"/tokenize", "/detokenize", "/invocations"})


def needs_key(path: str) -> bool:
    """`path` as the routes see it: below the application's route prefix (`route_path`)."""
    if path.startswith("/v1/"):
        return not path.startswith("/v1/health/")
    return path == "/metrics" or path in MODEL_ROUTES_OUTSIDE_V1


def route_path(scope: dict[str, Any]) -> str:
    """The path the app's routes match: a model application is mounted under its internal prefix
    (Serve sets it as `root_path`, and `path` keeps it). A request HAProxy placed under a model's
    prefix before that model's application existed reaches the platform application, which serves
    it as if unprefixed: the prefix joins `root_path` here, so routing and the key check agree."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    relative = path[len(root) :] if root and path.startswith(root) else path
    if relative.startswith(INTERNAL_PREFIX + "/"):
        prefix = "/".join(relative.split("/", 3)[:3])  # /_slmserve/<model>
        scope["root_path"] = root + prefix
        relative = relative[len(prefix) :] or "/"
    return relative


class EdgeMiddleware:
    def __init__(self, app: Any, served_by: str, replica: str | None = None) -> None:
        self.app = app
        self.identity = [(b"x-slmserve-served-by", served_by.encode())]
        if replica:  # direct mode: which engine replica answered (routing can be seen from outside)
            self.identity.append((b"x-slmserve-replica", replica.encode()))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        keys = getattr(state, "keys", None)
        status = 500

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *self.identity]
            await send(message)

        path = route_path(scope)
        try:
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None
            tenant = keys.tenant_for(authorization) if keys is not None else None
            if keys is not None and keys.enabled and tenant is None and needs_key(path):
                await _unauthorized(send_and_watch)
                return
            scope.setdefault("state", {})["tenant"] = tenant or "anonymous"
            await self.app(scope, receive, send_and_watch)
        finally:
            if (records := getattr(state, "records", None)) is not None:
                route = scope.get("route")
                records.add(HTTPRecord(getattr(route, "path", "unmatched"), status))


async def _unauthorized(send: Any) -> None:
    import json

    body = json.dumps(
        error_body(401, "a valid API key is required: send `Authorization: Bearer <key>`", code=Code.INVALID_API_KEY)
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
