"""The differential conformance matrix: the same requests to bare `vllm serve` and to slmserve (same model,
same engine arguments, greedy), and what a client can see of each answer, reduced to what must match:
status, error `param`, keys present, usage present or not, finish reasons, token counts, and the text
of greedy answers. `differences` lists every mismatch; tests/live/test_conformance.py holds the few
documented ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ITALY = [{"role": "user", "content": "What is the capital of Italy?"}]
GREEDY = {"model": MODEL, "max_tokens": 8, "temperature": 0}
USAGE, NO_USAGE = {"include_usage": True}, {"include_usage": False}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | None = None
    raw: bytes | None = None  # sent as is instead of `body`
    content_type: str = "application/json"
    stream: bool = False

    def send(self, http: httpx.Client) -> httpx.Response:
        content = self.raw if self.raw is not None else json.dumps(self.body).encode()
        return http.post(self.path, content=content, headers={"Content-Type": self.content_type})


def chat(name: str, stream: bool = False, **fields: Any) -> Case:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 8, "temperature": 0, **fields}
    return Case(name, "/v1/chat/completions", {**body, "stream": True} if stream else body, stream=stream)


def completion(name: str, stream: bool = False, **fields: Any) -> Case:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, **fields}
    return Case(name, "/v1/completions", {**body, "stream": True} if stream else body, stream=stream)


def responses(name: str, stream: bool = False, **fields: Any) -> Case:
    body = {"model": MODEL, "input": "What is the capital of France?", "max_output_tokens": 8, "temperature": 0}
    body |= fields
    return Case(name, "/v1/responses", {**body, "stream": True} if stream else body, stream=stream)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITY_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        },
    },
}

CASES = [
    chat("chat"),
    chat("chat streamed", True),
    chat("chat streamed with usage", True, stream_options=USAGE),
    chat(
        "chat streamed, continuous usage only",
        True,
        stream_options={"include_usage": False, "continuous_usage_stats": True},
    ),
    chat(
        "chat streamed, continuous usage", True, stream_options={"include_usage": True, "continuous_usage_stats": True}
    ),
    chat("chat with logprobs", logprobs=True, top_logprobs=2),
    chat("chat n=2", n=2),
    chat("chat with a stop string", stop=["."], max_tokens=30),
    chat("chat to a token budget", max_completion_tokens=5, ignore_eos=True),
    chat("chat as a JSON object", response_format={"type": "json_object"}),
    chat("chat with a seed", temperature=1.0, seed=42),
    completion("completion"),
    completion("completion streamed with usage", True, stream_options=USAGE),
    completion("completion with logprobs", logprobs=2),
    completion("completion echoed", echo=True, max_tokens=2),
    Case("tokenize a prompt", "/tokenize", {"model": MODEL, "prompt": "The capital of France"}),
    Case("tokenize messages", "/tokenize", {"model": MODEL, "messages": FRANCE}),
    Case("detokenize", "/detokenize", {"model": MODEL, "tokens": [504, 3575, 282, 4649]}),
    Case(
        "batched chat",
        "/v1/chat/completions/batch",
        {"model": MODEL, "messages": [FRANCE, ITALY], "max_tokens": 8, "temperature": 0},
    ),
    chat("chat to a JSON schema", response_format=CITY_SCHEMA, max_tokens=24),
    chat("chat with a named tool", tools=[WEATHER], tool_choice={"type": "function", "function": WEATHER["function"]}),
    chat("chat with a required tool", tools=[WEATHER], tool_choice="required", max_tokens=24),
    chat(
        "chat streaming a named tool",
        True,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": WEATHER["function"]},
    ),
    completion("completion to a choice", structured_outputs={"choice": ["Paris", "Rome"]}),
    responses("responses"),
    responses("responses streamed", True),
    responses("responses with instructions", instructions="Answer in one word."),
    responses("responses to a JSON schema", text={"format": {"type": "json_schema", **CITY_SCHEMA["json_schema"]}}),
    responses("responses, input as messages", input=FRANCE),
    Case("invocations, chat", "/invocations", {"model": MODEL, "messages": FRANCE, "max_tokens": 8, "temperature": 0}),
    # refused requests: the same status and param
    chat("seed above range", seed=2**64),
    chat("seed below range", seed=-(2**64)),
    chat("negative max_tokens", max_tokens=-1),
    chat("max_tokens past the context", max_tokens=5000),
    chat("negative temperature", temperature=-1),
    chat("top_p above 1", top_p=1.5),
    chat("too many top_logprobs", logprobs=True, top_logprobs=30),
    chat("n of 0", n=0),
    chat("no messages", messages=[]),
    chat("a prompt past the context", messages=[{"role": "user", "content": "hello " * 3000}]),
    completion("completion logprobs past the limit", logprobs=30),
    Case("chat without messages", "/v1/chat/completions", {"model": MODEL, "max_tokens": 4}),
    Case("an unknown model", "/v1/chat/completions", {"model": "no-such-model", "messages": FRANCE}),
    Case("malformed JSON", "/v1/chat/completions", raw=b'{"model": '),
    Case("a form body", "/v1/chat/completions", raw=b"model=x", content_type="application/x-www-form-urlencoded"),
    Case("detokenize strings", "/detokenize", {"model": MODEL, "tokens": ["a"]}),
    Case("a batch that streams", "/v1/chat/completions/batch", {**GREEDY, "messages": [FRANCE], "stream": True}),
    chat(
        "a named tool that is not offered",
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "nope"}},
    ),
    chat("tools that are not a list", tools={"a": 1}),
    responses("responses after an unknown response", previous_response_id="resp_unknown"),
    responses("responses in the background", background=True),
    responses("responses with no input", input=None),
    responses("responses to a negative budget", max_output_tokens=-1),
    # documented: slmserve's JSON types are strict (tests/live/test_conformance.py)
    chat("max_tokens as a string", max_tokens="5"),
]


@dataclass
class Seen:
    """What a client can rely on in one answer."""

    status: int
    param: str | None = None
    keys: list[str] = field(default_factory=list)
    choice_keys: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    usage: dict[str, int] | None = None
    text: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments); ids are random
    chunks_with_usage: str = ""  # streams: "none", "last", or "every"
    events_named: bool | None = None  # Responses API streams: each event's `event:` line names its type
    counts: dict[str, Any] = field(default_factory=dict)  # tokenize: count and tokens


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or choice.get("delta") or {}
    return str(message.get("content") or choice.get("text") or "")


def _usage(body: dict[str, Any]) -> dict[str, int] | None:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    keys = ("input_tokens", "output_tokens") if "input_tokens" in usage else ("prompt_tokens", "completion_tokens")
    return {key: usage[key] for key in keys}


def _tool_calls(choices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    calls = [call for choice in choices for call in (choice.get("message") or {}).get("tool_calls") or []]
    return [(call["function"]["name"], call["function"]["arguments"]) for call in calls]


def _output_text(response: dict[str, Any]) -> str:
    """A Responses API answer's text: its message items' output_text parts."""
    return "".join(
        part.get("text", "")
        for item in response.get("output") or []
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def seen(case: Case, response: httpx.Response) -> Seen:
    if response.status_code != 200:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        return Seen(response.status_code, param=error.get("param"))
    if case.stream:
        return _seen_events(response) if case.path == "/v1/responses" else _seen_stream(response)
    body = response.json()
    if case.path == "/v1/responses":
        return Seen(
            200, keys=sorted(body), usage=_usage(body), finish_reasons=[body["status"]], text=_output_text(body)
        )
    choices = body.get("choices") or []
    result = Seen(200, keys=sorted(body), usage=_usage(body))
    result.choice_keys = sorted({key for choice in choices for key in choice})
    result.finish_reasons = [choice.get("finish_reason") for choice in choices]
    result.tool_calls = _tool_calls(choices)
    if "seed" not in case.name:  # greedy answers match token for token
        result.text = "|".join(_choice_text(choice) for choice in sorted(choices, key=lambda c: c.get("index", 0)))
    result.counts = {key: body[key] for key in ("count", "tokens", "prompt") if key in body}
    return result


def _seen_stream(response: httpx.Response) -> Seen:
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    with_usage = [bool(chunk.get("usage")) for chunk in chunks]
    result = Seen(200, keys=sorted({key for chunk in chunks for key in chunk}))
    result.chunks_with_usage = "none" if not any(with_usage) else "every" if all(with_usage) else "last"
    result.usage = next((_usage(chunk) for chunk in reversed(chunks) if chunk.get("usage")), None)
    result.finish_reasons = [
        c.get("finish_reason") for chunk in chunks for c in chunk.get("choices") or [] if c.get("finish_reason")
    ]
    result.text = "".join(_choice_text(c) for chunk in chunks for c in chunk.get("choices") or [])
    return result


def _seen_events(response: httpx.Response) -> Seen:
    """A streamed Responses API answer: its event types in order, the final response's usage and status."""
    lines = response.text.splitlines()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    named = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    final = events[-1].get("response") or {} if events else {}
    result = Seen(200, keys=sorted(dict.fromkeys(event.get("type", "?") for event in events)), usage=_usage(final))
    result.finish_reasons = [final.get("status")]
    result.text = "".join(
        event.get("delta", "") for event in events if event.get("type") == "response.output_text.delta"
    )
    result.events_named = named == [event.get("type") for event in events]
    return result


def differences(bare: Seen, ours: Seen) -> list[str]:
    return [
        f"{name}: bare vLLM {getattr(bare, name)!r}, slmserve {getattr(ours, name)!r}"
        for name in Seen.__dataclass_fields__
        if getattr(bare, name) != getattr(ours, name)
    ]
