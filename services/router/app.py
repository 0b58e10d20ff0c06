"""The router deployment: FastAPI on Ray Serve, the platform's only HTTP ingress.

Hot path per request: read the body, json-parse it once, look the model up, one streaming
handle call to the engine deployment, then pass vLLM's SSE chunks through unbuffered. No
re-serialisation of chunks, no blocking calls on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import __version__
from services.admission import Admission, RateLimit, Rejected, estimate_tokens
from services.auth import KeyRing
from services.catalog import Catalog, ModelEntry
from services.errors import error_body
from services.media import MediaError, MediaFetcher, prepare_images
from services.metrics.records import CompletionRecord, RecordBuffer, RejectionRecord
from services.router.middleware import EdgeMiddleware
from services.router.openapi import openapi_document
from services.router.readiness import Readiness
from services.router.relay import REPLICA_GONE, RelayResponse, StreamRelay
from services.settings import Settings

logger = logging.getLogger("slmserve.router")

REQUEST_ID_HEADER = "X-Request-Id"
RETRY_AFTER_S = "5"
# /openapi.json is the router's own route (services/router/openapi.py), not FastAPI's default.
app = FastAPI(title="slmserve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(EdgeMiddleware)


class APIError(Exception):
    """Raised anywhere in a handler; rendered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, model: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}
        self.model, self.reason = model, reason  # for the rejected-requests metric


def _error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


@app.exception_handler(APIError)
async def _api_error(request: Request, error: APIError) -> JSONResponse:
    if error.reason and (buffer := getattr(request.app.state, "records", None)) is not None:
        buffer.add(RejectionRecord(error.model, error.reason))
    return _error_response(error.status, error.message, param=error.param, code=error.code, headers=error.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    message = "route not found" if error.status_code == 404 else str(error.detail)
    return _error_response(error.status_code, message)


@app.exception_handler(Exception)
async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    # A bug, not bad input: still an OpenAI-shaped body, and the trace in the replica's log.
    logger.exception("unhandled error: %s", error)
    return _error_response(500, "internal error; the request can be retried", code="internal_error")


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return _error_response(400, str(error.errors()[0].get("msg", "invalid request")))


def _request_id(request: Request) -> str:
    """Ray Serve's proxy takes the client's X-Request-Id (or makes one), logs it in its access
    log and echoes it in the response; reuse that id so vLLM's ids and logs match it."""
    context = serve.context._get_serve_request_context()
    return context.request_id or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    too_large = APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    return body


def _model_card(entry: ModelEntry, created: int) -> dict[str, Any]:
    return {
        "id": entry.name,
        "object": "model",
        "created": created,
        "owned_by": "slmserve",
        "root": entry.source,
        "aliases": entry.aliases,
        "max_model_len": entry.max_model_len,
        "modalities": entry.modalities,
    }


@serve.ingress(app)
class Router:
    def __init__(self, catalog: dict[str, Any], app_name: str, metrics_hub: DeploymentHandle,
                 *engines: DeploymentHandle) -> None:
        self.catalog = Catalog.model_validate(catalog)
        self.metrics_hub = metrics_hub
        self.records = RecordBuffer(metrics_hub)
        app.state.records = self.records
        self.created = int(time.time())
        self.handles = {entry.name: handle for entry, handle in zip(self.catalog.models, engines, strict=True)}
        self.readiness = Readiness(app_name, [entry.deployment_name for entry in self.catalog.models])
        settings = Settings()
        policy = self.catalog.media.model_copy(update={
            "allow_hosts": self.catalog.media.allow_hosts + settings.media_allow_hosts,
            "allow_networks": self.catalog.media.allow_networks + settings.media_allow_networks,
        })
        self.media = MediaFetcher(policy)
        self.keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
        app.state.keys = self.keys
        limits = self.catalog.router.rate_limits
        self.admission = Admission(
            {entry.name: entry.max_in_flight for entry in self.catalog.models},
            {tenant: RateLimit(**limit.model_dump()) for tenant, limit in limits.tenants.items()},
            RateLimit(**limits.default.model_dump()))
        self.openapi: dict[str, Any] | None = None  # built on first request (needs a loaded engine)

    def _ensure_polling(self) -> None:
        self.readiness.start()  # lazily: the replica's event loop only exists once requests arrive

    def _entry_for(self, body: dict[str, Any]) -> ModelEntry:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "`model` is required and must be a string", param="model", reason="invalid_request")
        entry = self.catalog.resolve(model)
        if entry is None:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found",
                           reason="model_not_found")
        if not self.readiness.is_ready(entry.deployment_name):
            raise APIError(503, f"model `{entry.name}` is still loading; retry shortly", code="model_not_ready",
                           headers={"Retry-After": RETRY_AFTER_S}, model=entry.name, reason="model_not_ready")
        return entry

    async def _forward(self, route: str, request: Request) -> Response:
        arrived = time.perf_counter()
        options = self.catalog.router
        deadline = asyncio.get_running_loop().time() + options.request_timeout_s
        self._ensure_polling()
        try:
            body = await _json_body(request, options.max_body_bytes)
        except APIError as error:
            error.reason = "invalid_json" if error.status == 400 else "request_too_large"
            raise
        entry = self._entry_for(body)
        media = None
        if route == "chat":
            try:
                media = await prepare_images(body, model=entry.name, accepts_images="image" in entry.modalities,
                                             max_images=entry.max_images, fetcher=self.media)
            except MediaError as error:
                raise APIError(400, str(error), param="messages", code=error.code, model=entry.name,
                               reason=error.code) from None
        try:
            self.admission.admit(entry.name, request.state.tenant, estimate_tokens(body))
        except Rejected as rejected:
            raise APIError(429, str(rejected), code=rejected.reason, model=entry.name, reason=rejected.reason,
                           headers={"Retry-After": str(rejected.retry_after_s)}) from None
        streaming = False
        try:
            request_id = _request_id(request)
            stream = self.handles[entry.name].options(stream=True).generate.remote(route, body, request_id)
            try:
                async with asyncio.timeout_at(deadline):
                    status, payload, outcome = await stream.__anext__()
            except TimeoutError:
                stream.cancel()
                raise APIError(504, "the request exceeded its deadline and was aborted", code="timeout",
                               model=entry.name, reason="timeout") from None
            except REPLICA_GONE as error:  # replica died or was torn down before answering
                logger.warning("engine call %s failed: %s", request_id, error)
                self.readiness.mark_failed(entry.deployment_name)
                raise APIError(503, f"model `{entry.name}` is unavailable right now; retry shortly",
                               code="replica_unavailable", headers={"Retry-After": RETRY_AFTER_S},
                               model=entry.name, reason="replica_unavailable") from None
            record = CompletionRecord(entry.name, success=status == 200, vision_s=media.seconds if media else None)
            if payload is not None:
                if outcome is not None:
                    record.ttft_s = record.e2e_s = time.perf_counter() - arrived
                    record.apply(outcome)
                self.records.add(record)
                return Response(payload, status_code=status, media_type="application/json")
            streaming = True
            return RelayResponse(StreamRelay(stream, request_id, record, arrived, self.records, deadline,
                                             lambda: self.admission.release(entry.name),
                                             lambda: self.readiness.mark_failed(entry.deployment_name)))
        finally:
            if not streaming:  # a stream releases its slot when it ends
                self.admission.release(entry.name)

    async def _metrics(self) -> Response:
        await self.records.flush()  # this replica's latest records first; others flush every 0.5 s
        return Response(await self.metrics_hub.render.remote(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        return await self._metrics()

    @app.get("/v1/metrics", response_class=PlainTextResponse)
    async def v1_metrics(self) -> Response:
        return await self._metrics()

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._forward("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward("completions", request)

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(entry, self.created) for entry in self.catalog.models]}

    @app.get("/v1/models/{model:path}")
    async def get_model(self, model: str) -> dict[str, Any]:
        entry = self.catalog.resolve(model)
        if entry is None:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return _model_card(entry, self.created)

    @app.get("/v1/health/live")
    async def live(self) -> dict[str, str]:
        self._ensure_polling()
        return {"status": "live"}

    @app.get("/v1/health/ready")
    async def ready(self) -> JSONResponse:
        self._ensure_polling()
        models = {entry.name: self.readiness.is_ready(entry.deployment_name) for entry in self.catalog.models}
        ready = all(models.values())
        return JSONResponse({"status": "ready" if ready else "not_ready", "models": models},
                            status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": RETRY_AFTER_S})

    @app.get("/health")
    async def health(self) -> JSONResponse:
        return await self.ready()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self) -> JSONResponse:
        """The request bodies come from vLLM's protocol models, which only an engine replica
        imports: ask the first ready one, once."""
        if self.openapi is None:
            self._ensure_polling()
            ready = [entry for entry in self.catalog.models if self.readiness.is_ready(entry.deployment_name)]
            if not ready:
                raise APIError(503, "no model is loaded yet; the API description needs one", code="model_not_ready",
                               headers={"Retry-After": RETRY_AFTER_S})
            schemas = await self.handles[ready[0].name].request_schemas.remote()
            self.openapi = openapi_document(app.openapi(), schemas, self.catalog)
        return JSONResponse(self.openapi)

    @app.get("/v1/version")
    async def version(self) -> dict[str, str]:
        return {"release": __version__, "api": "v1"}

    @app.get("/v1/metadata")
    async def metadata(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "modelInfo": [{"shortName": entry.name, "modelUrl": entry.source, "aliases": entry.aliases}
                          for entry in self.catalog.models],
            "repository_override": "",
            "assetInfo": [],
            "licenseInfo": {},
        }
