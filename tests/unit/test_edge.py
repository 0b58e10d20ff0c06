"""The edge (services/edge) over scripted engines (testkit/fake_engine.py): every answer slmserve gives
before or around the engine's own, without Ray or vLLM. The same behaviours through the real
application are tests/live/test_openai_api.py and tests/live/test_security.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.core.catalog import parse_catalog
from services.core.errors import ErrorBody
from services.edge.request import RequestEnvelope
from services.engine.protocol import Outcome
from testkit.fake_engine import (
    MODELS,
    Answer,
    Hang,
    Lost,
    ScriptedEngine,
    ScriptedReadiness,
    Stream,
    catalog_of,
    edge_with,
)

CHAT = {"model": "text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def run(coroutine):
    return asyncio.run(coroutine)


def error_of(response) -> dict:
    """The OpenAI error of a response, checked against the one error model."""
    assert response.headers["content-type"].startswith("application/json")
    return ErrorBody.model_validate(response.json()).error.model_dump()


async def post(under_test, body=None, *, path="/v1/chat/completions", **kwargs):
    async with under_test.client() as client:
        return await client.post(path, json=CHAT if body is None else body, **kwargs)


def test_an_answer_passes_through_with_the_engine_s_status_and_the_edge_s_headers():
    with edge_with(served_by="engine") as under_test:
        response = run(post(under_test))
    assert response.status_code == 200 and response.json()["object"] == "chat.completion"
    assert response.headers["x-slmserve-served-by"] == "engine"
    call = under_test.engines["text"].calls[0]
    assert (call.route, call.body, call.session_id) == ("chat", CHAT, None)


def test_an_alias_reaches_its_model_and_the_session_header_reaches_the_call():
    with edge_with(catalog_of(session_header="X-Conv")) as under_test:
        response = run(post(under_test, {**CHAT, "model": "default"}, headers={"X-Conv": "c1"}))
    assert response.status_code == 200
    assert under_test.engines["text"].calls[0].session_id == "c1"
    assert not under_test.engines["vision"].calls


@pytest.mark.parametrize(
    ("field", "value", "kind", "got"),
    [
        ("stream", "yes", "boolean", "string"),
        ("n", True, "integer", "boolean"),
        ("max_tokens", 5.0, "integer", "number"),
        ("temperature", True, "number", "boolean"),
        ("stream_options", [1], "object", "array"),
    ],
)
def test_a_wrong_json_type_is_a_400_naming_the_field_and_no_engine_sees_it(field, value, kind, got):
    with edge_with() as under_test:
        response = run(post(under_test, {**CHAT, field: value}))
    assert response.status_code == 400
    assert error_of(response) == {
        "message": f"`{field}` must be a JSON {kind}, not {got}",
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }
    assert not under_test.engines["text"].calls


def test_the_envelope_passes_every_other_field_to_the_engine_unchanged():
    body = {**CHAT, "temperature": 1, "seed": None, "logit_bias": {"1": 2}, "guided_json": {"type": "object"}}
    assert RequestEnvelope.model_validate(body).model_extra == {
        "messages": body["messages"],
        "logit_bias": {"1": 2},
        "guided_json": {"type": "object"},
    }
    with edge_with() as under_test:
        assert run(post(under_test, body)).status_code == 200
    assert under_test.engines["text"].calls[0].body == body  # the int temperature is not made a float


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"messages": []}, 400, "model", None),
        ({**CHAT, "model": 7}, 400, "model", None),
        ({**CHAT, "model": ""}, 400, "model", None),
        ({**CHAT, "model": "nope"}, 404, "model", "model_not_found"),
    ],
)
def test_a_missing_or_unknown_model(body, status, param, code):
    with edge_with() as under_test:
        response = run(post(under_test, body))
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)


def test_malformed_json_a_non_object_and_a_form_body_are_400s():
    async def send(under_test, content: bytes, content_type: str):
        async with under_test.client() as client:
            return await client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})

    with edge_with() as under_test:
        for content, content_type, message in [
            (b"{", "application/json", "request body is not valid JSON"),
            (b"[1]", "application/json", "request body must be a JSON object"),
            (b"model=text", "application/x-www-form-urlencoded", "Only 'application/json' is allowed"),
            (b"[" * 100_000, "application/json", "nested too deeply"),
        ]:
            response = run(send(under_test, content, content_type))
            assert response.status_code == 400 and message in error_of(response)["message"], response.text
        malformed = run(send(under_test, b'{"model": ', "application/json"))
        assert error_of(malformed)["param"] == "body.10"  # as vLLM (FastAPI) names it: the offset


def test_a_body_over_the_limit_is_a_413():
    with edge_with(catalog_of(max_body_bytes=1024)) as under_test:
        response = run(post(under_test, {**CHAT, "padding": "x" * 2000}))
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_a_loading_model_is_a_503_with_retry_after():
    catalog = catalog_of()
    readiness = ScriptedReadiness(loading={catalog.models[0].deployment_name})
    with edge_with(catalog, readiness=readiness) as under_test:
        response = run(post(under_test))
    assert response.status_code == 503 and response.headers["retry-after"]
    assert error_of(response)["code"] == "model_not_ready"


def test_an_engine_that_never_answers_is_a_504_and_is_cancelled():
    with edge_with(catalog_of(request_timeout_s=0.3), {"text": ScriptedEngine(Hang())}) as under_test:
        response = run(post(under_test))
    assert response.status_code == 504 and error_of(response)["code"] == "timeout"
    assert under_test.engines["text"].streams[0].cancelled


def test_a_replica_lost_before_its_head_is_tried_once_more():
    with edge_with(engines={"text": ScriptedEngine(Lost(), Answer())}) as under_test:
        response = run(post(under_test))
    assert response.status_code == 200 and len(under_test.engines["text"].calls) == 2
    assert under_test.readiness.failed == [under_test.edge.catalog.models[0].deployment_name]


def test_a_replica_lost_twice_is_a_503_replica_unavailable():
    with edge_with(engines={"text": ScriptedEngine(Lost())}) as under_test:
        response = run(post(under_test))
    assert response.status_code == 503 and response.headers["retry-after"]
    assert error_of(response)["code"] == "replica_unavailable"
    assert len(under_test.engines["text"].calls) == 2


def test_a_stream_relays_the_engine_s_frames_and_ends_once():
    frames = [f'data: {{"choices":[{{"delta":{{"content":"{i}"}}}}]}}\n\n' for i in range(3)]
    with edge_with(engines={"text": ScriptedEngine(Stream(frames, Outcome(3, 3, "stop")))}) as under_test:
        response = run(post(under_test, {**CHAT, "stream": True}))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.text == "".join(frames) + "data: [DONE]\n\n"


def test_a_stream_that_passes_its_deadline_ends_with_an_error_event_and_done():
    slow = Stream(['data: {"choices":[]}\n\n'] * 50, pause_s=0.05)
    with edge_with(catalog_of(request_timeout_s=0.3), {"text": ScriptedEngine(slow)}) as under_test:
        response = run(post(under_test, {**CHAT, "stream": True}))
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    assert under_test.engines["text"].streams[0].cancelled


def test_the_in_flight_bound_is_a_429_with_retry_after_and_frees_its_slot():
    models = [{"name": "text", "source": "embedded://smollm2-135m-instruct", "max_in_flight": 1}]
    catalog = parse_catalog({"models": models})
    slow = Stream(['data: {"choices":[]}\n\n'] * 4, pause_s=0.1)
    with edge_with(catalog, {"text": ScriptedEngine(slow)}) as under_test:

        async def two_at_once():
            async with under_test.client() as client:
                first = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "stream": True}))
                await asyncio.sleep(0.15)  # the first holds the only slot
                second = await client.post("/v1/chat/completions", json=CHAT)
                return await first, second, await client.post("/v1/chat/completions", json=CHAT)

        first, second, third = run(two_at_once())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] and error_of(second)["code"] == "queue_full"
    assert third.status_code == 200  # the stream's slot came back when it ended


def test_api_keys_guard_every_api_route_and_leave_health_open(monkeypatch):
    monkeypatch.setenv("SLMSERVE_API_KEYS", "team:sk-unit")
    with edge_with() as under_test:

        async def calls():
            async with under_test.client() as anonymous, under_test.client(Authorization="Bearer sk-unit") as keyed:
                return (
                    await anonymous.post("/v1/chat/completions", json=CHAT),
                    await anonymous.get("/v1/models"),
                    await anonymous.get("/v1/health/ready"),
                    await keyed.post("/v1/chat/completions", json=CHAT),
                    await keyed.get("/v1/models"),
                )

        chat, models, health, keyed_chat, keyed_models = run(calls())
    assert chat.status_code == models.status_code == 401 and error_of(chat)["type"] == "authentication_error"
    assert health.status_code == 200 and keyed_chat.status_code == 200
    assert {card["id"] for card in keyed_models.json()["data"]} == {"text", "vision"}
    assert not any("sk-unit" in response.text for response in (chat, models, keyed_chat, keyed_models))


def test_the_openapi_document_s_errors_are_the_error_model():
    with edge_with() as under_test:

        async def document():
            async with under_test.client() as client:
                return (await client.get("/openapi.json")).json()

        doc = run(document())
    schemas = doc["components"]["schemas"]
    assert schemas["OpenAIError"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert schemas["ErrorDetail"]["required"] == ["message", "type", "param", "code"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    assert set(chat["responses"]) == {"200", "400", "401", "404", "413", "429", "503", "504"}
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["default", "text", "vision"]


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        ("/tokenize", {"model": "text", "prompt": "hi"}, "tokenize"),
        ("/detokenize", {"model": "text", "tokens": [1, 2]}, "detokenize"),
        (
            "/v1/chat/completions/batch",
            {"model": "text", "messages": [[{"role": "user", "content": "a"}]]},
            "chat_batch",
        ),
        ("/invocations", CHAT, "chat"),
        ("/invocations", {"model": "text", "prompt": "once upon"}, "completions"),
        ("/v1/responses", {"model": "text", "input": "hi"}, "responses"),
    ],
)
def test_vllm_s_other_routes_reach_the_engine_as_their_route_and_need_the_key(monkeypatch, path, body, route):
    monkeypatch.setenv("SLMSERVE_API_KEYS", "team:sk-unit")
    with edge_with() as under_test:
        anonymous = run(post(under_test, body, path=path))
        keyed = run(post(under_test, body, path=path, headers={"Authorization": "Bearer sk-unit"}))
    assert anonymous.status_code == 401
    assert keyed.status_code == 200 and [call.route for call in under_test.engines["text"].calls] == [route]


def test_version_and_ping_answer_without_a_key(monkeypatch):
    monkeypatch.setenv("SLMSERVE_API_KEYS", "team:sk-unit")
    with edge_with() as under_test:

        async def calls():
            async with under_test.client() as client:
                return await client.get("/version"), await client.get("/ping"), await client.post("/ping")

        version, ping_get, ping_post = run(calls())
    assert version.status_code == 200 and version.json()["version"]
    assert ping_get.status_code == ping_post.status_code == 200


def test_images_in_a_batch_s_conversations_and_a_tokenize_request_meet_the_image_guard():
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}
    conversation = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    with edge_with() as under_test:
        to_text = run(
            post(under_test, {"model": "text", "messages": [conversation]}, path="/v1/chat/completions/batch")
        )
        to_vision = run(post(under_test, {"model": "vision", "messages": conversation}, path="/tokenize"))
    assert to_text.status_code == 400 and error_of(to_text)["code"] == "model_not_multimodal"
    assert to_vision.status_code == 400 and error_of(to_vision)["code"] == "image_url_refused"
    assert not under_test.engines["text"].calls and not under_test.engines["vision"].calls


def test_tokenize_calls_are_not_counted_as_completions():
    from prometheus_client import generate_latest

    with edge_with() as under_test:
        run(post(under_test, {"model": "text", "prompt": "hi"}, path="/tokenize"))
        run(post(under_test))
        run(under_test.edge.records.flush())
    text = generate_latest(under_test.hub.registry).decode()
    assert 'request_success_total{base_model="text",model_name="text"} 1.0' in text


def test_the_platform_s_own_time_is_measured_per_phase():
    """ingress from HAProxy's stamp (a stamp from far away or none at all is not a measurement), the
    edge's own work up to the engine call, and the relay's hand-over of a stream's chunks."""
    import time

    from services.core.layout import RECEIVED_HEADER

    frames = [f'data: {{"choices":[{{"delta":{{"content":"{i}"}}}}]}}\n\n' for i in range(3)]
    engines = {"text": ScriptedEngine(Stream(frames, Outcome(3, 3, "stop")), Answer(), Answer())}
    stamp = str(int((time.time() - 0.25) * 1e6))
    with edge_with(engines=engines) as under_test:
        run(post(under_test, {**CHAT, "stream": True}, headers={RECEIVED_HEADER: stamp}))
        run(post(under_test, headers={RECEIVED_HEADER: "12"}))  # 1970: not plausible
        run(post(under_test, headers={RECEIVED_HEADER: "soon"}))
        run(under_test.edge.records.flush())

    def sample(phase: str, suffix: str) -> float | None:
        labels = {"model_name": "text", "phase": phase}
        return under_test.hub.registry.get_sample_value(f"slmserve_platform_overhead_seconds_{suffix}", labels)

    assert sample("ingress", "count") == 1 and 0.25 <= sample("ingress", "sum") < 5
    assert sample("edge", "count") == 3 and 0 < sample("edge", "sum") < 5
    assert sample("relay", "count") == 1 and 0 < sample("relay", "sum") < 5


NOT_HERE = Answer(
    404, b'{"error":{"message":"not found","type":"NotFoundError","param":"response_id","code":404}}', None
)


def test_a_stored_response_is_looked_up_by_id_in_each_model_until_one_holds_it(monkeypatch):
    """The id names a replica, not a model: the text model's engine does not hold it, the vision one does."""
    monkeypatch.setenv("SLMSERVE_API_KEYS", "team:sk-unit")
    engines = {
        "text": ScriptedEngine(NOT_HERE),
        "vision": ScriptedEngine(Answer(body=b'{"id":"resp_a-1","object":"response"}')),
    }
    with edge_with(engines=engines) as under_test:

        async def calls():
            async with under_test.client(Authorization="Bearer sk-unit") as client:
                found = await client.get("/v1/responses/resp_a-1")
                cancelled = await client.post("/v1/responses/resp_a-1/cancel")
                streamed = await client.get("/v1/responses/resp_a-1?stream=true")
            async with under_test.client() as client:
                anonymous = await client.get("/v1/responses/resp_a-1")
            return found, cancelled, streamed, anonymous

        found, cancelled, streamed, anonymous = run(calls())
    assert found.status_code == 200 and found.json()["id"] == "resp_a-1"
    assert cancelled.status_code == 200
    assert streamed.status_code == 400 and error_of(streamed)["param"] == "stream"
    assert anonymous.status_code == 401
    lookups = [("response", {"response_id": "resp_a-1"}), ("response_cancel", {"response_id": "resp_a-1"})]
    assert [(call.route, call.body) for call in engines["text"].calls] == lookups
    assert [(call.route, call.body) for call in engines["vision"].calls] == lookups


def test_a_response_no_model_holds_is_a_404_naming_the_id():
    with edge_with(engines={"text": ScriptedEngine(NOT_HERE), "vision": ScriptedEngine(NOT_HERE)}) as under_test:

        async def call():
            async with under_test.client() as client:
                return await client.get("/v1/responses/resp_gone-1")

        response = run(call())
    assert response.status_code == 404
    assert error_of(response) == {
        "message": "Response with id 'resp_gone-1' not found.",
        "type": "not_found_error",
        "param": "response_id",
        "code": None,
    }


def test_a_background_response_is_refused_before_any_engine_sees_it():
    with edge_with() as under_test:
        response = run(post(under_test, {"model": "text", "input": "hi", "background": True}, path="/v1/responses"))
    assert response.status_code == 400 and error_of(response)["param"] == "background"
    assert not under_test.engines["text"].calls


async def _model_states(under_test) -> dict[str, str]:
    async with under_test.client() as client:
        return {card["id"]: card["state"] for card in (await client.get("/v1/models")).json()["data"]}


def held_catalog(hold_timeout_s: float):
    """`text` scales to zero and holds its requests; `vision` always runs."""
    to_zero = {"autoscaling_config": {"min_replicas": 0, "max_replicas": 1}}
    text = {**MODELS[0], "deployment": to_zero, "idle": {"hold_timeout_s": hold_timeout_s}}
    return parse_catalog({"models": [text, MODELS[1]]})


@pytest.mark.parametrize(
    ("hold_timeout_s", "step", "starts_after_s", "status"),
    [
        (5.0, Answer(delay_s=0.3), None, 200),  # a replica starts and answers within the hold
        (0.3, Answer(delay_s=0.8), 0.2, 200),  # it runs by the hold's end: the request's deadline applies
        (0.3, Hang(), None, 503),  # none runs by the hold's end
    ],
)
def test_a_model_at_zero_replicas_holds_its_requests_while_one_starts(hold_timeout_s, step, starts_after_s, status):
    readiness = ScriptedReadiness(loading={"engine-text"})
    engines = {"text": ScriptedEngine(step), "vision": ScriptedEngine()}
    with edge_with(held_catalog(hold_timeout_s), engines, readiness=readiness) as under_test:

        async def calls():
            async with under_test.client() as client:
                health = await client.get("/v1/health/ready")
                if starts_after_s is not None:
                    asyncio.get_running_loop().call_later(starts_after_s, readiness.loading.clear)
                return health, await client.post("/v1/chat/completions", json=CHAT)

        health, response = run(calls())
        run(under_test.edge.records.flush())
        states = run(_model_states(under_test))
    assert states == {"text": "running" if starts_after_s else "starting", "vision": "running"}
    assert health.status_code == 200  # a model at zero serves: its requests are held
    assert response.status_code == status, response.text
    held = under_test.hub.registry.get_sample_value(
        "slmserve_request_hold_seconds_count", {"model_name": "text", "base_model": "text"}
    )
    assert held == (1 if status == 200 else 0)
    if status == 503:
        assert error_of(response)["code"] == "model_not_ready" and response.headers["retry-after"]
        assert engines["text"].streams[0].cancelled  # the held request leaves the handle's queue


def test_a_model_that_does_not_scale_to_zero_is_still_refused_while_it_loads():
    readiness = ScriptedReadiness(loading={"engine-vision"})
    with edge_with(held_catalog(5.0), readiness=readiness) as under_test:
        response = run(post(under_test, {**CHAT, "model": "vision"}))
    assert response.status_code == 503 and error_of(response)["code"] == "model_not_ready"
    assert not under_test.engines["vision"].calls


@pytest.mark.parametrize("path", ["/metrics", "/v1/metrics"])
def test_metrics_may_be_kept_to_the_operators_keys(monkeypatch, path):
    """/metrics shows every tenant's usage; `edge.metrics_tenants` keeps it to the keys named there."""
    monkeypatch.setenv("SLMSERVE_API_KEYS", "ops:sk-ops,app:sk-app")

    async def read(under_test, key: str):
        async with under_test.client(authorization=f"Bearer {key}") as client:
            return await client.get(path)

    import time

    with edge_with(catalog_of(metrics_tenants=["ops"])) as under_test, edge_with() as open_to_every_key:
        for hub in (under_test.hub, open_to_every_key.hub):
            hub._states_read_at = time.monotonic()  # replica states were just read: no Serve controller here
        app, ops = run(read(under_test, "sk-app")), run(read(under_test, "sk-ops"))
        anyone = run(read(open_to_every_key, "sk-app"))
    assert app.status_code == 403
    assert error_of(app) == {
        "message": "this API key may not read the platform's metrics",
        "type": "permission_error",
        "param": None,
        "code": "permission_denied",
    }
    assert ops.status_code == 200 and "request_success_total" in ops.text
    assert anyone.status_code == 200


def test_v1_models_says_asleep_for_a_running_model_whose_every_replica_sleeps():
    from services.metrics.engine_series import EngineSnapshot

    sleeper = {**MODELS[0], "idle": {"sleep_after_s": 60}}
    with edge_with(parse_catalog({"models": [sleeper, MODELS[1]]})) as under_test:
        run(under_test.hub.update_engine(EngineSnapshot("r1", "text", 8, [], asleep=True)))
        run(under_test.hub.update_engine(EngineSnapshot("r2", "vision", 8, [])))
        assert run(_model_states(under_test)) == {"text": "asleep", "vision": "running"}
        run(under_test.hub.update_engine(EngineSnapshot("r1", "text", 8, [], asleep=False)))  # woken
        assert run(_model_states(under_test)) == {"text": "running", "vision": "running"}
        run(under_test.hub.update_engine(EngineSnapshot("r1", "text", 8, [], asleep=True)))
        under_test.readiness.loading.add(under_test.edge.catalog.models[0].deployment_name)
        assert run(_model_states(under_test))["text"] == "starting"  # Serve's view first: not running
