"""The OpenAI API through the real stack (router -> engine deployment -> vLLM CPU -> SmolLM2),
called with the `openai` client and raw HTTP the way users call it."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from testkit.live import BURST_HANG_S

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_coherently(client):
    response = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=30, temperature=0)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert response.model == MODEL
    assert response.usage.prompt_tokens > 5
    assert response.usage.completion_tokens == response.usage.total_tokens - response.usage.prompt_tokens


def test_chat_stream_arrives_incrementally_with_usage(client):
    arrivals, pieces, usage = [], [], None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a short poem about the sea."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic())
    assert len(pieces) >= 20, "tokens should arrive as separate chunks"
    # Unbuffered: the first token reaches the client well before the last one.
    assert arrivals[-1] - arrivals[0] > 0.2
    assert usage is not None and usage.completion_tokens == 48


def test_completions_non_stream_and_stream(client):
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert response.choices[0].text.strip()
    assert response.usage.completion_tokens <= 8
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == response.choices[0].text


def test_models_lists_catalog_and_resolves_aliases(client, live_server):
    listed = {model.id: model for model in client.models.list().data}
    assert set(listed) == {entry.name for entry in live_server.catalog.models}
    assert client.models.retrieve("default").id == MODEL
    response = client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=4, temperature=0)
    assert response.model == MODEL


def test_greedy_is_deterministic(client):
    texts = {
        client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=20, temperature=0)
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_seed_reproduces_sampling(client):
    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a story."}],
                max_tokens=24,
                temperature=1.0,
                seed=seed,
            )
            .choices[0]
            .message.content
        )

    assert sample(1234) == sample(1234)


def test_stop_sequence_and_length_finish(client):
    stopped = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=30, temperature=0, stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=3, temperature=0)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3


def test_request_id_is_echoed(live_server):
    response = live_server.http.post(
        "/v1/chat/completions",
        headers={"X-Request-Id": "trace-42"},
        json={"model": MODEL, "messages": FRANCE, "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["id"].endswith("trace-42")


def test_sixteen_concurrent_requests_succeed(async_client):
    async def one(i: int):
        return await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=16
        )

    async def run_all():
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(run_all())
    assert len(results) == 16
    assert all(result.choices[0].message.content for result in results)


def test_client_disconnect_aborts_engine_request(live_server):
    engine = live_server.engine_handle(MODEL)
    assert engine.num_unfinished_requests.remote().result() == 0
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
        assert engine.num_unfinished_requests.remote().result() == 1
    # The client is gone: the engine must drop the request long before 1500 tokens are made.
    deadline = time.monotonic() + 15
    while engine.num_unfinished_requests.remote().result() != 0:
        assert time.monotonic() < deadline, "engine kept generating for a disconnected client"
        time.sleep(0.2)


def test_health_and_info_routes(live_server):
    base = live_server.base_url
    assert httpx.get(f"{base}/v1/health/live").status_code == 200  # health needs no key
    ready = httpx.get(f"{base}/v1/health/ready")
    names = [entry.name for entry in live_server.catalog.models]
    assert ready.status_code == 200 and ready.json()["models"] == dict.fromkeys(names, True)
    assert httpx.get(f"{base}/health").status_code == 200
    assert live_server.http.get("/v1/version").json()["release"]
    model_info = live_server.http.get("/v1/metadata").json()["modelInfo"]
    assert [info["shortName"] for info in model_info] == names
    # The test catalog lists no profiles: each engine runs its own engine_args, and says so.
    assert [info["profile"]["name"] for info in model_info] == ["default"] * len(names)
    assert model_info[0]["profile"] == {
        "name": "default",
        "precision": "float32",
        "tensor_parallel_size": 1,
        "hardware": "no GPU (CPU engine)",
    }
    metrics = live_server.http.get("/metrics").text.splitlines()
    profiles = [line for line in metrics if line.startswith("slmserve_engine_profile{")]
    assert len(profiles) == len(names) and all(line.endswith(" 1.0") for line in profiles), profiles
    asleep = [line for line in metrics if line.startswith("slmserve_engine_replicas_asleep{")]
    assert len(asleep) == len(names) and all(line.endswith(" 0.0") for line in asleep), asleep  # CPU: never


def test_readiness_was_503_while_loading(live_server):
    assert live_server.first_ready_status == 503
    assert "retry-after" in {key.lower() for key in live_server.first_ready_headers}
    status, body = live_server.early_chat
    assert status == 503
    assert body["error"]["code"] == "model_not_ready"


def test_a_burst_right_after_start_is_answered_promptly(live_server):
    """Issues 13/16: a valid request sent just after a burst of 400s once waited 30 s in a Serve
    handle that had not yet heard of the engine's replicas. The router now makes each handle at
    start and reports a model ready only once its handle knows a replica."""
    statuses = [status for status, _ in live_server.first_burst]
    slowest = max(seconds for _, seconds in live_server.first_burst)
    assert slowest < BURST_HANG_S, live_server.first_burst
    assert statuses.count(200) == 21 and statuses.count(400) == 12 and set(statuses) == {200, 400, 404}, statuses


def _assert_error(response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "messages": "not a list"}, 400, "body.messages"),  # as vLLM names it
        ({"messages": FRANCE}, 400, "model"),
        ({"model": MODEL, "messages": FRANCE, "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": MODEL, "messages": FRANCE, "max_tokens": -1}, 400, None),
        ({"model": MODEL, "messages": FRANCE, "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "messages": FRANCE, "n": 0}, 400, None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, None),
    ],
    ids=[
        "messages-type",
        "model-missing",
        "max-tokens-too-large",
        "max-tokens-negative",
        "temperature-type",
        "n-zero",
        "prompt-too-long",
    ],
)
def test_bad_chat_requests_get_openai_errors(live_server, body, status, param):
    response = live_server.http.post("/v1/chat/completions", json=body, timeout=60)
    _assert_error(response, status, param=param)


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("chat/completions", "stream", "yes"),
        ("chat/completions", "stream", 1),
        ("completions", "echo", "true"),
        ("chat/completions", "n", True),
        ("chat/completions", "n", 1.5),
        ("chat/completions", "max_tokens", "5"),
        ("completions", "max_tokens", 4.0),
        ("chat/completions", "temperature", "0.5"),
        ("chat/completions", "temperature", False),
        ("chat/completions", "seed", "7"),
        ("chat/completions", "stream_options", "include_usage"),
    ],
)
def test_wrong_json_types_are_400_not_coerced(live_server, route, field, value):
    """Issue 16 finding 4: OpenAI answers 400 for a wrongly typed field; vLLM's models coerced some."""
    body = {"model": MODEL, "max_tokens": 2, **({"messages": FRANCE} if route.startswith("chat") else {"prompt": "hi"})}
    response = live_server.http.post(f"/v1/{route}", json={**body, field: value})
    error = _assert_error(response, 400, param=field)
    assert field in error["message"]


def test_right_json_types_and_null_pass(live_server):
    body = {
        "model": MODEL,
        "messages": FRANCE,
        "max_tokens": 2,
        "temperature": 1,
        "top_p": 0.9,
        "n": 1,
        "stream": False,
        "seed": None,
        "stream_options": None,
    }
    assert live_server.http.post("/v1/chat/completions", json=body).status_code == 200


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert raised.value.body["code"] == "model_not_found"


def test_malformed_json_and_unknown_route(live_server):
    _assert_error(
        live_server.http.post(
            "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
        ),
        400,
    )
    _assert_error(live_server.http.post("/v1/chat/completions", json=[1, 2]), 400)
    _assert_error(live_server.http.get("/v1/nowhere"), 404)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", None],
    ids=["form", "text", "none"],
)
def test_a_body_that_is_not_declared_json_is_400_as_on_vllm(live_server, content_type):
    """Bare vLLM checks the media type of every JSON route (issue 33); a declared charset is fine."""
    body = json.dumps({"model": MODEL, "messages": FRANCE, "max_tokens": 2}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    error = _assert_error(live_server.http.post("/v1/chat/completions", content=body, headers=headers), 400)
    assert error["message"] == "Unsupported Media Type: Only 'application/json' is allowed"
    typed = {"Content-Type": "application/json; charset=utf-8"}
    assert live_server.http.post("/v1/chat/completions", content=body, headers=typed, timeout=60).status_code == 200


def test_prompt_too_long_for_completions_too(live_server):
    response = live_server.http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "word " * 3000, "max_tokens": 4}, timeout=60
    )
    error = _assert_error(response, 400)
    assert "context" in error["message"] or "length" in error["message"]


def test_replica_survives_bad_input(client):
    # After every error case above, the same replica still serves.
    response = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=8, temperature=0)
    assert response.choices[0].message.content


@pytest.mark.parametrize(
    "options",
    [None, {"include_usage": False}, {"include_usage": False, "continuous_usage_stats": True}],
    ids=["none", "usage-off", "usage-off-continuous-on"],
)
def test_stream_without_include_usage_has_no_usage_anywhere(live_server, options):
    """The engine always asks vLLM for usage (metrics need it) and must drop it unless asked; bare
    vLLM sends no per-chunk usage without include_usage, even with continuous_usage_stats (issue 33)."""
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 4, "stream": True}
    if options is not None:
        body["stream_options"] = options
    with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) > 2  # content chunks came
    assert not any('"usage":{' in line for line in lines)


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": []},  # found by fuzzing: vLLM's own validator error escaped as a 503
        {"model": MODEL},
        {"model": MODEL, "prompt": ""},
    ],
    ids=["messages-empty", "prompt-missing", "prompt-empty"],
)
def test_completions_without_a_prompt_are_400(live_server, body):
    response = live_server.http.post("/v1/completions", json=body, timeout=60)
    _assert_error(response, 400)


def test_tokenize_and_detokenize_round_trip_through_vllm(live_server, client):
    """vLLM's tokenizer routes, through the platform (they lie outside /v1/) to the model's engine."""
    tokens = live_server.http.post("/tokenize", json={"model": MODEL, "prompt": "The capital of France"})
    assert tokens.status_code == 200, tokens.text
    answer = tokens.json()
    assert answer["count"] == len(answer["tokens"]) > 2 and answer["max_model_len"] == 2048
    text = live_server.http.post("/detokenize", json={"model": MODEL, "tokens": answer["tokens"]})
    assert text.status_code == 200 and text.json()["prompt"] == "The capital of France"
    chat = live_server.http.post("/tokenize", json={"model": MODEL, "messages": FRANCE})
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=1)
    assert chat.status_code == 200 and chat.json()["count"] == reply.usage.prompt_tokens  # the chat template's count
    unknown = live_server.http.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_batched_chat_answers_each_conversation(live_server, client):
    questions = [FRANCE, [{"role": "user", "content": "What is the capital of Italy?"}]]
    response = live_server.http.post(
        "/v1/chat/completions/batch", json={"model": MODEL, "messages": questions, "max_tokens": 20, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
    singles = [client.chat.completions.create(model=MODEL, messages=q, max_tokens=20, temperature=0) for q in questions]
    assert [c["message"]["content"] for c in choices] == [s.choices[0].message.content for s in singles]


def test_invocations_serves_chat_and_completion_bodies_and_version_answers(live_server):
    chat = live_server.http.post("/invocations", json={"model": MODEL, "messages": FRANCE, "max_tokens": 5})
    completion = live_server.http.post("/invocations", json={"model": MODEL, "prompt": "Paris is", "max_tokens": 5})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    assert completion.status_code == 200 and completion.json()["object"] == "text_completion"
    assert httpx.get(f"{live_server.base_url}/version").json()["version"]
    assert httpx.get(f"{live_server.base_url}/ping").status_code == 200
