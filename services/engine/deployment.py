"""The engine deployment: one Ray Serve deployment per catalog model, hosting vLLM's AsyncLLM
and vLLM's own OpenAI serving layer (chat templates, sampling, logprobs, structured output).

The router talks to it through one streaming method, `generate`, whose first item is a head
`(status, body, outcome)`: a full JSON body for errors and non-streamed responses, or `None`
when SSE chunks follow. The router can so choose the HTTP status before a single byte goes out,
and both kinds of request take the same single handle hop. A stream carries its `Outcome`
(usage and finish reason, for the router's metrics) just before its final `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray import serve

from services.catalog import ModelEntry
from services.engine import vllm_compat
from services.engine.sources import resolve_source
from services.errors import error_json, from_vllm_error, sse_error_event
from services.metrics.hub import EngineSnapshot
from services.streaming import SSE_DONE, coalesce

logger = logging.getLogger("slmserve.engine")

Outcome = dict[str, Any]  # {"prompt_tokens", "generation_tokens", "finish_reason"}
Head = tuple[int, bytes | None, Outcome | None]
SNAPSHOT_PERIOD_S = 1.0
_FINISH_REASON = re.compile(r'"finish_reason":"(\w+)"')
_USAGE_ONLY_CHUNK = '"choices":[]'


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


class EngineDeployment:
    """Wrapped by `serve.deployment` in services.app with the catalog entry's options."""

    async def __init__(self, entry: dict[str, Any], cache_dir: str, metrics_hub: Any = None) -> None:
        self.entry = ModelEntry.model_validate(entry)
        self.metrics_hub = metrics_hub
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
        if metrics_hub is not None:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._report_metrics_forever())

    async def generate(self, route: str, body: dict[str, Any], request_id: str) -> AsyncIterator[Head | str | Outcome]:
        """Yields the head, then (for streams) SSE-framed chunks exactly as vLLM writes them, with
        the stream's Outcome just before the final [DONE]."""
        serving = self.serving.get(route)
        if serving is None:
            yield 404, error_json(404, f"{route} is not supported by model {self.entry.name}"), None
            return
        client_wants_usage = _wants_usage(body)
        if body.get("stream") is True and isinstance(body.get("stream_options") or {}, dict):
            # Always ask vLLM for the final usage chunk (metrics need it); drop it below unless asked.
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        create = serving.create_chat_completion if route == "chat" else serving.create_completion
        try:
            request = self.request_types[route].model_validate({**body, "request_id": request_id})
            result = await create(request, None)
        except ValidationError as error:  # before CLIENT_ERRORS: pydantic's error is a ValueError too
            message, param = _validation_message(error)
            yield 400, error_json(400, message, param=param), None
            return
        except vllm_compat.CLIENT_ERRORS as error:  # vLLM's validators and serving layer raise these
            yield (*from_vllm_error(vllm_compat.error_from_exception(serving, error)), None)
            return
        if isinstance(result, vllm_compat.ErrorResponse):
            yield (*from_vllm_error(result), None)
            return
        if not hasattr(result, "__aiter__"):
            usage = result.usage
            outcome = {"prompt_tokens": usage.prompt_tokens, "generation_tokens": usage.completion_tokens or 0,
                       "finish_reason": result.choices[-1].finish_reason if result.choices else None}
            yield 200, result.model_dump_json().encode(), outcome
            return
        yield 200, None, None
        async for item in coalesce(self._frames(result, request_id, client_wants_usage)):
            yield item

    async def _frames(self, chunks: AsyncIterator[str], request_id: str, client_wants_usage: bool,
                      ) -> AsyncIterator[str | Outcome]:
        """vLLM's SSE chunks, minus the usage chunk the client did not ask for, with the Outcome
        placed just before [DONE] (clients hang up right after [DONE])."""
        outcome: Outcome = {"prompt_tokens": 0, "generation_tokens": 0, "finish_reason": None}
        try:
            async for chunk in chunks:
                if chunk.startswith(SSE_DONE):
                    yield outcome
                    yield chunk
                    return
                if _USAGE_ONLY_CHUNK in chunk and '"usage"' in chunk:
                    usage = json.loads(chunk.removeprefix("data: "))["usage"]
                    outcome["prompt_tokens"] = usage["prompt_tokens"]
                    outcome["generation_tokens"] = usage.get("completion_tokens") or 0
                    if not client_wants_usage:
                        continue
                elif '"finish_reason":"' in chunk:
                    outcome["finish_reason"] = _FINISH_REASON.findall(chunk)[-1]
                yield chunk
        except Exception as error:  # the stream already started: report in-band, never hang
            logger.exception("stream %s failed", request_id)
            outcome["finish_reason"] = "error"
            yield outcome
            yield sse_error_event(500, f"generation failed: {type(error).__name__}")
            yield SSE_DONE

    async def _report_metrics_forever(self) -> None:
        """Ship this replica's vLLM metrics to the hub; the hub drops replicas that go quiet."""
        from prometheus_client import REGISTRY

        replica_id = serve.get_replica_context().replica_id.unique_id
        max_num_seqs = self.stack.engine.vllm_config.scheduler_config.max_num_seqs
        while True:
            families = [family for family in REGISTRY.collect() if family.name.startswith("vllm:")]
            try:
                await self.metrics_hub.update_engine.remote(
                    EngineSnapshot(replica_id, self.entry.name, max_num_seqs, families))
            except Exception:
                logger.warning("metrics hub unreachable", exc_info=True)
            await asyncio.sleep(SNAPSHOT_PERIOD_S)

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON schemas of the bodies this engine accepts (vLLM's protocol models), for the
        router's OpenAPI document; `$defs` refer to `#/components/schemas/...`."""
        return {route: model.model_json_schema(ref_template="#/components/schemas/{model}")
                for route, model in self.request_types.items()}

    async def num_unfinished_requests(self) -> int:
        return self.stack.num_unfinished_requests()

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.entry.name,
            "pid": os.getpid(),
            "vllm_version": vllm_compat.vllm_version(),
            "load_seconds": self.load_seconds,
            "max_model_len": self.stack.engine.model_config.max_model_len,
        }

    async def check_health(self) -> None:
        # Ray Serve calls this periodically; a dead engine core makes the replica restart.
        await self.stack.check_health()

    async def __del__(self) -> None:
        await self.stack.shutdown()
