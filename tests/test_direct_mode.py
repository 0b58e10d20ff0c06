"""Direct mode, end to end: a single-model catalog's engine replica is the HTTP server, and HAProxy
forwards each request straight to it (issue 13).

The module starts a second, real instance with `slmserve serve --catalog cpu` on its own port and
with its own API key, next to the session's routed test application (issue 16's finding 2: two
instances on one machine must never answer for each other, before or after both are ready)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from loadtests.serving import serving
from tests.conftest import AUTH, READY_TIMEOUT_S, fresh_start_burst

MODEL = "smollm2-135m-instruct"
DIRECT_KEY = "sk-direct-only"
DIRECT_AUTH = {"Authorization": f"Bearer {DIRECT_KEY}"}


@dataclass
class DirectServer:
    base_url: str
    early: dict  # what a request sent during the engine's load got, with the *other* instance's key
    first_burst: list[tuple[int, float]]

    @functools.cached_property
    def http(self) -> httpx.Client:
        """One client for this server that sends its API key (as LiveServer.http does)."""
        return httpx.Client(base_url=self.base_url, headers=DIRECT_AUTH, timeout=60)


def _send_early(base_url: str, into: dict) -> None:
    """While the engine loads, Serve holds requests; send one with the session instance's key.
    Before the application is deployed at all, HAProxy answers with its own placeholder (a
    plain-text 404 naming no slmserve replica); those answers are counted and the request resent."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    into["placeholders"] = 0
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{base_url}/v1/chat/completions",
                headers=AUTH,
                timeout=READY_TIMEOUT_S,
                json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
        except httpx.TransportError:  # HAProxy not listening yet
            time.sleep(0.2)
            continue
        served_by = response.headers.get("x-slmserve-served-by")
        if served_by is None and response.status_code == 404:
            into["placeholders"] += 1
            time.sleep(0.2)
            continue
        into.update(status=response.status_code, served_by=served_by, body=response.text)
        return


@pytest.fixture(scope="module")
def direct_server(live_server) -> Iterator[DirectServer]:
    early: dict = {}
    threads: list[threading.Thread] = []

    def send_early(base_url: str) -> None:
        threads.append(threading.Thread(target=_send_early, args=(base_url, early), daemon=True))
        threads[0].start()

    keys = f"direct:{DIRECT_KEY}"
    with serving("cpu", api_keys=keys, ready_timeout_s=READY_TIMEOUT_S, on_start=send_early) as server:
        burst = fresh_start_burst(server.base_url, DIRECT_AUTH, MODEL)
        threads[0].join(60)
        yield DirectServer(server.base_url, early, burst)


def test_the_engine_replica_answers_http_itself(direct_server):
    client = openai.OpenAI(base_url=f"{direct_server.base_url}/v1", api_key=DIRECT_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert raw.headers["x-slmserve-served-by"] == "engine"
    reply = raw.parse()
    assert reply.model == MODEL and reply.usage.completion_tokens > 0
    with direct_server.http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": "Count to five."}],
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.headers["x-slmserve-served-by"] == "engine"
        frames = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 16 and chunks[-1]["choices"] == []
    assert sum(1 for chunk in chunks if chunk["choices"]) >= 8  # token by token, not coalesced


def test_edge_concerns_run_in_the_engine_replica(direct_server):
    http = direct_server.http
    assert httpx.get(f"{direct_server.base_url}/v1/models", timeout=10).status_code == 401
    unknown = http.post("/v1/chat/completions", json={"model": "tiny-phimoe", "messages": []})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    bad = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    nested = http.post("/v1/chat/completions", content=b"[" * 200_000, headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and nested.json()["error"]["type"] == "invalid_request_error"
    image = http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
        },
    )
    assert image.status_code == 400 and image.json()["error"]["code"] == "model_not_multimodal"
    assert [card["id"] for card in http.get("/v1/models").json()["data"]] == [MODEL]
    assert http.get("/v1/health/ready").json() == {"status": "ready", "models": {MODEL: True}}
    assert "time_to_first_token_seconds_bucket" in http.get("/metrics").text


def test_a_client_that_leaves_mid_stream_stops_the_engine(direct_server):
    http = direct_server.http
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(4))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the hub's view of the engine refreshes every second
        running = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith(f'num_requests_running{{model_name="{MODEL}"}}')
        ]
        if running and float(running[0].split()[-1]) == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"the engine kept generating for a client that had left: {running}")


def test_a_burst_right_after_start_is_answered_promptly(direct_server):
    statuses = [status for status, _ in direct_server.first_burst]
    assert max(seconds for _, seconds in direct_server.first_burst) < 5, direct_server.first_burst
    assert statuses.count(200) == 21 and statuses.count(400) == 12 and set(statuses) == {200, 400, 404}, statuses


def test_two_instances_never_answer_for_each_other(direct_server, live_server):
    # During the direct instance's load, a request to it carrying the session instance's key was
    # held, then refused by the direct instance itself: never served by the session's instance.
    assert direct_server.early.get("status") == 401, direct_server.early
    assert direct_server.early.get("served_by") == "engine"
    assert (
        httpx.post(
            f"{direct_server.base_url}/v1/completions",
            headers=AUTH,
            timeout=30,
            json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
        ).status_code
        == 401
    )
    assert (
        live_server.http.post(
            "/v1/completions", headers=DIRECT_AUTH, json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
        ).status_code
        == 401
    )
    session_models = {card["id"] for card in live_server.http.get("/v1/models").json()["data"]}
    direct_models = {card["id"] for card in direct_server.http.get("/v1/models").json()["data"]}
    assert direct_models == {MODEL} and session_models == {entry.name for entry in live_server.catalog.models}
    assert live_server.http.get("/v1/models").headers["x-slmserve-served-by"] == "router"
