"""The typed contract between an engine and the HTTP edge that serves it (vLLM-free, so both sides
and the tests import it without loading vLLM).

An engine answers one request as a stream whose first item is a `Head`: the HTTP status plus either
a complete JSON body (errors, non-streamed answers) or `None` when SSE frames follow. A stream then
yields vLLM's SSE frames as `str`, and its `Outcome` (usage, finish reason) just before the final
`data: [DONE]`, because clients hang up right after it. The same contract holds whether the edge
runs in the engine's own process (direct mode) or reaches it through a Serve handle (routed mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

# The OpenAI routes an engine answers (services/engine/routes.py); the edge maps HTTP paths to them.
# "response" and "response_cancel" act on a stored response by id (the Responses API's GET and cancel).
RouteKind = Literal[
    "chat", "completions", "chat_batch", "tokenize", "detokenize", "responses", "response", "response_cancel"
]
GENERATIVE: frozenset[RouteKind] = frozenset({"chat", "completions", "chat_batch", "responses"})  # counted as requests


@dataclass(frozen=True, slots=True)
class EngineCall:
    """One request, as the edge hands it to an engine (in-process, or pickled through a handle)."""

    route: RouteKind
    body: dict[str, Any]  # the client's OpenAI body, passed to vLLM unchanged
    request_id: str
    session_id: str | None = None  # for the replica choice (routed mode); the engine ignores it
    trace_headers: dict[str, str] | None = None  # W3C: vLLM's span becomes a child of the edge's


@dataclass(slots=True)
class Outcome:
    """What the edge records about a finished request."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finish_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.finish_reason not in (None, "error", "abort")


class Head(NamedTuple):
    status: int
    body: bytes | None  # a complete JSON body, or None when SSE frames follow
    outcome: Outcome | None  # set for complete bodies that reached the engine


StreamItem = Head | str | Outcome
