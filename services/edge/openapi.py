"""The edge's OpenAPI document (/openapi.json).

FastAPI describes the routes, but the edge reads raw bodies (one JSON parse, no re-validation
on the hot path), so FastAPI cannot see what the completion routes take. This adds it: the
request bodies are vLLM's own protocol models, as an engine replica reports them, with `model`
narrowed to this catalog's names and aliases; and every route gets the OpenAI error responses it
really returns (FastAPI's 422 is a 400 here)."""

from __future__ import annotations

import copy
from typing import Any

from services.core.catalog import ModelEntry
from services.core.errors import ErrorBody
from services.edge.middleware import needs_key
from services.engine import sse

BODY_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/chat/completions/batch": "chat_batch",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/v1/responses": "responses",
}
KIND_TITLES = {"tokenize": "TokenizeRequest"}  # a union of two models has no title of its own
_ERROR_MEANINGS = {
    "400": "invalid request (malformed JSON, a bad field, prompt too long, bad image)",
    "401": "missing or wrong API key (when keys are configured)",
    "404": "unknown model or route",
    "413": "request body over the edge's limit",
    "429": "admission bound or rate limit reached; see Retry-After",
    "503": "the model is loading or its replica failed; see Retry-After",
    "504": "the request passed its deadline and was aborted",
}
# Fields the edge sets itself: a client's value is overridden, so they are not part of the API.
_ROUTER_OWNED = ("request_id",)


def _error_responses(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": _ERROR_MEANINGS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
        }
        for status in statuses
    }


def _ref(title: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{title}"}


def _register(components: dict[str, Any], schema: dict[str, Any], title: str, model_names: list[str]) -> str:
    """`schema` as a component, with `model` required and one of the catalog's names (the edge picks
    the engine by it); a union gets that on each of its models."""
    for option in schema.get("anyOf", []):
        referenced = components[option["$ref"].rsplit("/", 1)[1]]
        _register(components, referenced, referenced["title"], model_names)
    if "properties" in schema:
        for field in _ROUTER_OWNED:
            schema["properties"].pop(field, None)
        schema["properties"]["model"] = {
            "type": "string",
            "enum": model_names,
            "description": "a catalog model name or alias (GET /v1/models)",
        }
        schema["required"] = sorted({*schema.get("required", []), "model"})
    title = schema.get("title", title)
    components[title] = schema
    return str(title)


# One server-sent event, as a reader of the stream sees it (its fields, not the raw text): the
# schema of the event-stream media type, event by event.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a JSON chunk, or [DONE]"},
        "event": {"type": "string", "description": "the Responses API's event type"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _answer_responses(kind: str) -> dict[str, Any]:
    streams = kind in ("chat", "completions", "responses")
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        content[sse.MEDIA_TYPE] = {"schema": SSE_EVENT}
    return {
        "200": {
            "description": "the answer" + ("; with `stream: true`, server-sent events of chunks" if streams else ""),
            "content": content,
        },
        **_error_responses("400", "401", "404", "413", "429", "503", "504"),
    }


def openapi_document(
    base: dict[str, Any], request_schemas: dict[str, dict[str, Any]], models: list[ModelEntry]
) -> dict[str, Any]:
    """`base` is FastAPI's document; `request_schemas` maps route kind to a JSON schema whose
    `$defs` refer to `#/components/schemas/...`; `models` are the ones this edge serves."""
    doc = copy.deepcopy(base)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs"))
    components["OpenAIError"] = error_schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    model_names = sorted({name for entry in models for name in entry.names})
    titles: dict[str, str] = {}
    for kind, request_schema in request_schemas.items():
        if kind not in BODY_ROUTES.values():  # the lookups by response id take no body
            continue
        schema = copy.deepcopy(request_schema)
        components.update(schema.pop("$defs", {}))
        titles[kind] = _register(components, schema, KIND_TITLES.get(kind, kind), model_names)
    for path, kind in BODY_ROUTES.items():
        if kind not in titles or path not in doc["paths"]:  # a route this vLLM does not serve
            continue
        operation = doc["paths"][path]["post"]
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(titles[kind])}}}
        operation["responses"] = _answer_responses(kind)
    if "/invocations" in doc["paths"] and {"chat", "completions"} <= titles.keys():
        invocation = {"anyOf": [_ref(titles["chat"]), _ref(titles["completions"])]}
        operation = doc["paths"]["/invocations"]["post"]
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": invocation}}}
        operation["responses"] = _answer_responses("chat")
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if "{" in path:
                responses.update(_error_responses("400", "404"))
            if needs_key(path):
                responses.update(_error_responses("401"))
    for path in ("/v1/health/ready", "/health", "/ping"):
        for operation in doc["paths"][path].values():
            operation["responses"]["503"] = {
                "description": "not every model has a running replica yet; see Retry-After",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
    return doc
