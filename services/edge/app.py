"""The HTTP surface of every slmserve replica that answers clients: the OpenAI routes, NIM-style
health and metadata, metrics and the OpenAPI document, with OpenAI-shaped errors everywhere.

`ROUTES` is one route table; `build_app` mounts it on a fresh FastAPI app per replica with that
replica's `Edge` in `app.state`, so an engine replica (direct mode) and a PlatformIngress replica
serve exactly the same API.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import __version__
from services.core.catalog import ModelEntry
from services.core.errors import APIError, Code, error_body
from services.core.timing import RETRY_AFTER_S
from services.edge.edge import Edge
from services.edge.middleware import EdgeMiddleware
from services.edge.openapi import openapi_document
from services.metrics.records import RejectionRecord

logger = logging.getLogger("slmserve.edge")
ROUTES = APIRouter()


def _edge(request: Request) -> Edge:
    edge: Edge = request.app.state.edge
    return edge


def _error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def _model_card(entry: ModelEntry, created: int, state: str) -> dict[str, Any]:
    return {
        "id": entry.name,
        "object": "model",
        "created": created,
        "owned_by": "slmserve",
        "root": entry.source,
        "aliases": entry.aliases,
        "max_model_len": entry.max_model_len,
        "modalities": entry.modalities,
        "state": state,  # running, asleep (woken by the next request), starting, zero (requests held), unavailable
    }


async def _metrics(request: Request) -> Response:
    allowed = _edge(request).catalog.edge.metrics_tenants
    if allowed and _edge(request).keys.enabled and request.state.tenant not in allowed:
        # /metrics shows every tenant's usage: with keys on, the catalog may keep it to the operators'.
        raise APIError(403, "this API key may not read the platform's metrics", code=Code.PERMISSION_DENIED)
    edge = _edge(request)  # this replica's latest records go with the call; others ship every 0.5 s
    return Response(await edge.scraper.text(edge.records.take()), media_type=CONTENT_TYPE_LATEST)


@ROUTES.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return await _metrics(request)


@ROUTES.get("/v1/metrics", response_class=PlainTextResponse)
async def v1_metrics(request: Request) -> Response:
    return await _metrics(request)


@ROUTES.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _edge(request).forward("chat", request)


@ROUTES.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _edge(request).forward("completions", request)


@ROUTES.post("/v1/chat/completions/batch")
async def chat_completions_batch(request: Request) -> Response:
    return await _edge(request).forward("chat_batch", request)


@ROUTES.post("/v1/responses")
async def create_response(request: Request) -> Response:
    return await _edge(request).forward("responses", request)


@ROUTES.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> Response:
    return await _edge(request).lookup("response", response_id, request)


@ROUTES.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> Response:
    return await _edge(request).lookup("response_cancel", response_id, request)


@ROUTES.post("/tokenize")
async def tokenize(request: Request) -> Response:
    return await _edge(request).forward("tokenize", request)


@ROUTES.post("/detokenize")
async def detokenize(request: Request) -> Response:
    return await _edge(request).forward("detokenize", request)


@ROUTES.post("/invocations")
async def invocations(request: Request) -> Response:
    """SageMaker's route, as vLLM serves it: a chat body (`messages`) or a completion body."""
    return await _edge(request).forward(None, request)


def _adapter_card(name: str, base: ModelEntry, created: int) -> dict[str, Any]:
    assert base.lora is not None
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "slmserve",
        "root": f"{base.lora.adapters_dir.rstrip('/')}/{name}",
        "parent": base.name,
        "max_model_len": base.max_model_len,
        "modalities": base.modalities,
    }


async def _model_cards(edge: Edge) -> list[dict[str, Any]]:
    """The catalog's models, then each model's LoRA adapters (`parent` names the base, as in vLLM and NIM)."""
    states = await edge.states()
    cards = [_model_card(entry, edge.created, states[entry.name]) for entry in edge.models]
    return cards + [_adapter_card(name, base, edge.created) for name, base in sorted((await edge.adapters()).items())]


@ROUTES.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await _model_cards(_edge(request))}


@ROUTES.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    edge = _edge(request)
    entry = edge.catalog.resolve(model)
    if entry is not None and entry in edge.models:
        return _model_card(entry, edge.created, (await edge.states())[entry.name])
    base = (await edge.adapters()).get(model)
    if base is None:
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code=Code.MODEL_NOT_FOUND)
    return _adapter_card(model, base, edge.created)


@ROUTES.get("/v1/health/live")
async def live(request: Request) -> dict[str, str]:
    _edge(request).readiness.start()
    return {"status": "live"}


@ROUTES.get("/v1/health/ready")
async def ready(request: Request) -> JSONResponse:
    edge = _edge(request)
    # A model that scales to zero serves with no replica running: its requests are held while one starts.
    models = {entry.name: edge.is_ready(entry) or entry.scales_to_zero for entry in edge.models}
    is_ready = all(models.values())
    return JSONResponse(
        {"status": "ready" if is_ready else "not_ready", "models": models},
        status_code=200 if is_ready else 503,
        headers=None if is_ready else {"Retry-After": str(RETRY_AFTER_S)},
    )


@ROUTES.get("/health")
async def health(request: Request) -> JSONResponse:
    return await ready(request)


@ROUTES.get("/ping")
@ROUTES.post("/ping")
async def ping(request: Request) -> JSONResponse:
    """SageMaker's health check, as vLLM serves it beside /invocations."""
    return await ready(request)


@ROUTES.get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request) -> JSONResponse:
    """The request bodies come from vLLM's protocol models, which only an engine imports: ask the
    first ready one, once."""
    edge = _edge(request)
    if edge.openapi is None:
        loaded = [entry for entry in edge.models if edge.is_ready(entry)]
        if not loaded:
            raise APIError(
                503,
                "no model is loaded yet; the API description needs one",
                code=Code.MODEL_NOT_READY,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        schemas = await edge.engines[loaded[0].name].request_schemas()
        edge.openapi = openapi_document(request.app.openapi(), schemas, edge.models)
    return JSONResponse(edge.openapi)


@ROUTES.get("/v1/version")
async def version() -> dict[str, str]:
    return {"release": __version__, "api": "v1"}


@ROUTES.get("/version")
async def server_version() -> dict[str, str]:
    """vLLM's `/version`, with slmserve's release (NIM's is /v1/version)."""
    return {"version": __version__}


@ROUTES.get("/v1/metadata")
async def metadata(request: Request) -> dict[str, Any]:
    edge = _edge(request)
    return {
        "version": __version__,
        "modelInfo": [
            {
                "shortName": entry.name,
                "modelUrl": entry.source,
                "aliases": entry.aliases,
                "profile": await edge.engines[entry.name].profile(),
            }
            for entry in edge.models
        ],
        "repository_override": "",
        "assetInfo": [],
        "licenseInfo": {},
    }


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    if error.reason:
        tenant = getattr(request.state, "tenant", "")
        _edge(request).records.add(RejectionRecord(error.model, error.reason, error.base_model, tenant))
    if error.status >= 500:
        logger.warning("%s %s: %s (%s)", request.method, request.url.path, error.message, error.__cause__ or "")
    return _error_response(error.status, error.message, param=error.param, code=error.code, headers=error.headers)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    message = "route not found" if error.status_code == 404 else str(error.detail)
    return _error_response(error.status_code, message)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return _error_response(400, str(error.errors()[0].get("msg", "invalid request")))


async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    # A bug, not bad input: still an OpenAI-shaped body, and the trace in the replica's log.
    logger.exception("unhandled error: %s", error)
    return _error_response(500, "internal error; the request can be retried", code=Code.INTERNAL_ERROR)


def build_app(edge: Edge) -> FastAPI:
    # /openapi.json is the edge's own route (services/edge/openapi.py), not FastAPI's default.
    app = FastAPI(title="slmserve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(ROUTES)
    app.state.edge = edge
    app.state.keys = edge.keys
    app.state.records = edge.records
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(EdgeMiddleware, served_by=edge.served_by, replica=edge.replica)
    return app
