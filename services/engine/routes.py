"""The OpenAI routes an engine answers, each through vLLM's own serving object and request model,
exactly as bare `vllm serve` does; a route this vLLM release lacks is left out (the engine then
answers it 404, as bare vLLM would)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.engine import vllm_compat
from services.engine.protocol import RouteKind


@dataclass(frozen=True)
class EngineRoute:
    serving: Any  # vLLM's serving object
    method: str  # its coroutine for this route: (request, raw_request) -> response | generator | ErrorResponse
    request: TypeAdapter[Any]  # vLLM's request model (a union for /tokenize)
    takes_request_id: bool  # the model has vLLM's `request_id` field, set to the edge's id

    def parse(self, body: dict[str, Any], request_id: str) -> Any:
        """vLLM's request model of `body`. pydantic's ValidationError is the caller's 400; so is any other
        error a vLLM validator raises on input it did not expect (`structured_outputs` as a list made
        vLLM 0.32's completion validator raise AttributeError, a 500 in bare vLLM), as a ValueError."""
        try:
            return self.request.validate_python({**body, "request_id": request_id} if self.takes_request_id else body)
        except Exception as error:
            if isinstance(error, (ValidationError, *vllm_compat.CLIENT_ERRORS)):  # vLLM's mapping names `param`
                raise
            raise ValueError(f"invalid request: {type(error).__name__}: {error}") from error

    async def create(self, body: dict[str, Any], request_id: str, raw_request: Any) -> Any:
        return await getattr(self.serving, self.method)(self.parse(body, request_id), raw_request)

    def schema(self) -> dict[str, Any]:
        """The request's JSON schema; `$defs` refer to `#/components/schemas/...`."""
        schema: dict[str, Any] = self.request.json_schema(ref_template="#/components/schemas/{model}")
        return schema


class ResponseLookup(BaseModel):
    """A request about one stored response (the Responses API's GET and cancel routes), as the edge
    sends it from the path and query."""

    model_config = ConfigDict(extra="forbid")
    response_id: str
    stream: bool = False
    starting_after: int | None = None


@dataclass(frozen=True)
class StoredResponses:
    """vLLM's lookups by response id, with the (request, raw_request) call shape of its other routes."""

    serving: Any

    async def retrieve(self, lookup: ResponseLookup, raw_request: Any) -> Any:
        return await self.serving.retrieve_responses(
            lookup.response_id, starting_after=lookup.starting_after, stream=lookup.stream
        )

    async def cancel(self, lookup: ResponseLookup, raw_request: Any) -> Any:
        return await self.serving.cancel_responses(lookup.response_id)

    def create_error_response(self, *args: Any, **kwargs: Any) -> Any:
        return self.serving.create_error_response(*args, **kwargs)


def engine_routes(stack: vllm_compat.ServingStack) -> dict[RouteKind, EngineRoute]:
    candidates: dict[RouteKind, tuple[Any, str, Any, bool]] = {
        "chat": (stack.chat, "create_chat_completion", vllm_compat.ChatCompletionRequest, True),
        "completions": (stack.completion, "create_completion", vllm_compat.CompletionRequest, True),
        "chat_batch": (
            stack.chat_batch,
            "create_batch_chat_completion",
            vllm_compat.BatchChatCompletionRequest,
            True,
        ),
        "tokenize": (stack.tokenization, "create_tokenize", vllm_compat.TokenizeRequest, False),
        "detokenize": (stack.tokenization, "create_detokenize", vllm_compat.DetokenizeRequest, False),
        "responses": (stack.responses, "create_responses", vllm_compat.ResponsesRequest, True),
    }
    if stack.responses is not None:
        stored = StoredResponses(stack.responses)
        candidates["response"] = (stored, "retrieve", ResponseLookup, False)
        candidates["response_cancel"] = (stored, "cancel", ResponseLookup, False)
    return {
        kind: EngineRoute(serving, method, TypeAdapter(request), takes_id)
        for kind, (serving, method, request, takes_id) in candidates.items()
        if serving is not None and request is not None
    }
