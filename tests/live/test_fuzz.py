"""Property-based fuzzing (hypothesis) of request bodies through the live application (never a 5xx),
and schemathesis driving every operation of its own /openapi.json (positive and negative cases: no
5xx, and the statuses, content types and bodies the document declares). The parsers' own properties
are tests/unit/test_fuzz_inputs.py. SLMSERVE_FUZZ_EXAMPLES sets the budget: small in `make test`,
>= 1000 per property in `make fuzz`."""

from __future__ import annotations

import collections
from typing import Any

import httpx
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as schema_checks

from services.edge.app import ROUTES
from testkit.live import AUTH
from testkit.strategies import FUZZ, json_scalars, json_values

FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream_options",
    "tools",
    "tool_choice",
    "presence_penalty",
    "min_p",
    "top_k",
    "ignore_eos",
    "prompt",
    "max_completion_tokens",
    "logit_bias",
    "user",
]
MODELS = ["smollm2-135m-instruct", "default", "tiny-phimoe", "vision", "nope", ""]
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
        "content": st.text(max_size=60) | json_values,
    }
)
request_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | json_scalars, "messages": st.lists(message, max_size=3) | json_values},
    optional={name: json_values for name in FIELDS if name not in ("model", "messages")},
)


def _bounded(body: dict, path: str = "/v1/chat/completions") -> dict:
    # Keep generation short: the property is about parsing, not about waiting for tokens. A response
    # left to its model's whole context took tens of seconds on a CPU (the fuzz test: 16-74 s a run).
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int) and body[key] > 8:
            body[key] = 8
    body.setdefault("max_output_tokens" if path.startswith("/v1/responses") else "max_tokens", 4)
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    return body


def _no_outside_urls(value: Any) -> Any:
    """Generated image URLs would make the router's fetcher resolve and contact random hosts:
    traffic stays on this machine, so every URL becomes a (bad) inline image."""
    if isinstance(value, str):
        return "data:image/png;base64,AAAA" if "://" in value else value
    if isinstance(value, list):
        return [_no_outside_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: _no_outside_urls(item) for key, item in value.items()}
    return value


def test_openapi_document_describes_the_real_routes(live_server):
    doc = httpx.get(f"{live_server.base_url}/openapi.json", timeout=30).json()
    routes = {route.path_format for route in ROUTES.routes if getattr(route, "include_in_schema", False)}
    assert set(doc["paths"]) == routes
    names = {name for entry in live_server.catalog.models for name in entry.names}
    for path, title in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{title}"}
        model = doc["components"]["schemas"][title]["properties"]["model"]
        assert set(model["enum"]) == names
        assert {"400", "401", "404", "429", "503"} <= set(doc["paths"][path]["post"]["responses"])
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["required"]


SCHEMA_CHECKS = [
    schema_checks.not_a_server_error,
    schema_checks.status_code_conformance,
    schema_checks.content_type_conformance,
    schema_checks.response_schema_conformance,
]


def test_schemathesis_cases_get_only_declared_answers_and_no_5xx(live_server):
    """Every operation of the document, then the chat route alone (with a dozen routes sharing the budget,
    the first draw may hold no chat request the engine answers)."""
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json")
    answers: collections.Counter[str] = collections.Counter()

    def both_modes(of) -> Any:
        return of.as_strategy(generation_mode=GenerationMode.POSITIVE) | of.as_strategy(
            generation_mode=GenerationMode.NEGATIVE
        )

    for cases in (both_modes(schema), both_modes(schema.include(path="/v1/chat/completions"))):

        @FUZZ
        @given(case=cases)
        def check(case) -> None:
            if isinstance(case.body, dict):
                case.body = _no_outside_urls(_bounded(case.body, case.path))
            response = case.call(base_url=live_server.base_url, headers=AUTH, timeout=120)
            answers[f"{case.method} {case.path} {response.status_code}"] += 1
            case.validate_response(response, checks=SCHEMA_CHECKS)

        check()
    print("schemathesis answers:", dict(sorted(answers.items())))
    # The cases got past the router's own checks: the engines answered and refused some of them.
    assert any(key.startswith("POST /v1/chat/completions 200") for key in answers), answers
    assert any(key.startswith("POST /v1/chat/completions 400") for key in answers), answers


def test_fuzzed_chat_and_completion_bodies_never_get_a_5xx(live_server):
    @FUZZ
    @given(body=request_bodies, route=st.sampled_from(["chat/completions", "completions"]))
    def check(body: dict, route: str) -> None:
        response = live_server.http.post(f"/v1/{route}", json=_bounded(body), timeout=120)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert (
        live_server.http.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ).status_code
        == 200
    )


def test_fuzzed_raw_bodies_never_get_a_5xx(live_server):
    @FUZZ
    @given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def check(raw: bytes) -> None:
        response = live_server.http.post(
            "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60
        )
        assert response.status_code < 500, (response.status_code, response.text[:300])

    check()
