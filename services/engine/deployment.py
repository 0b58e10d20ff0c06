"""The engine deployment: one Ray Serve deployment per catalog model, hosting vLLM's AsyncLLM
and vLLM's own OpenAI serving layer (chat templates, sampling, logprobs, structured output).

The router talks to it through one streaming method, `generate`, whose first item is a head
`(status, body)`: a full JSON body for errors and non-streamed responses, or `None` when SSE
chunks follow. The router can so choose the HTTP status before a single byte goes out, and
both kinds of request take the same single handle hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.catalog import ModelEntry
from services.engine import vllm_compat
from services.engine.sources import resolve_source
from services.errors import error_json, from_vllm_error, sse_error_event

logger = logging.getLogger("slmserve.engine")

Head = tuple[int, bytes | None]
ROUTES = ("chat", "completions")


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


class EngineDeployment:
    """Wrapped by `serve.deployment` in services.app with the catalog entry's options."""

    async def __init__(self, entry: dict[str, Any], cache_dir: str) -> None:
        self.entry = ModelEntry.model_validate(entry)
        started = time.monotonic()
        model = resolve_source(self.entry.source, Path(cache_dir))
        namespace = vllm_compat.engine_namespace(model, self.entry.names, self.entry.engine_args)
        self.stack = vllm_compat.ServingStack(namespace)
        await self.stack.start()
        self.serving = {"chat": self.stack.chat, "completions": self.stack.completion}
        self.request_types = {
            "chat": vllm_compat.ChatCompletionRequest,
            "completions": vllm_compat.CompletionRequest,
        }
        self.load_seconds = time.monotonic() - started
        logger.info("engine for %s ready in %.1fs", self.entry.name, self.load_seconds)

    async def generate(self, route: str, body: dict[str, Any], request_id: str) -> AsyncIterator[Head | str]:
        """Yields the head, then (for streams) SSE-framed chunks exactly as vLLM writes them."""
        serving = self.serving.get(route)
        if serving is None:
            yield 404, error_json(404, f"{route} is not supported by model {self.entry.name}")
            return
        try:
            request = self.request_types[route].model_validate({**body, "request_id": request_id})
        except ValidationError as error:
            message, param = _validation_message(error)
            yield 400, error_json(400, message, param=param)
            return
        create = serving.create_chat_completion if route == "chat" else serving.create_completion
        try:
            result = await create(request, None)
        except vllm_compat.CLIENT_ERRORS as error:
            yield from_vllm_error(vllm_compat.error_from_exception(serving, error))
            return
        if isinstance(result, vllm_compat.ErrorResponse):
            yield from_vllm_error(result)
            return
        if not hasattr(result, "__aiter__"):
            yield 200, result.model_dump_json().encode()
            return
        yield 200, None
        try:
            async for chunk in result:
                yield chunk
        except Exception as error:  # the stream already started: report in-band, never hang
            logger.exception("stream %s failed", request_id)
            yield sse_error_event(500, f"generation failed: {type(error).__name__}")
            yield "data: [DONE]\n\n"

    async def num_unfinished_requests(self) -> int:
        return self.stack.num_unfinished_requests()

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.entry.name,
            "vllm_version": vllm_compat.vllm_version(),
            "load_seconds": self.load_seconds,
            "max_model_len": self.stack.engine.model_config.max_model_len,
        }

    async def check_health(self) -> None:
        # Ray Serve calls this periodically; a dead engine core makes the replica restart.
        await self.stack.check_health()

    async def __del__(self) -> None:
        await self.stack.shutdown()
