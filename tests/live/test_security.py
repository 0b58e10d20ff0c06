"""API keys, per-tenant rate limits, the per-model admission bound, body limits and request
deadlines, against the live application (keys on; limits from the test catalog)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from testkit.live import API_KEY, LIMITED_KEY

TEXT, MOE = "smollm2-135m-instruct", "tiny-phimoe"
HELLO = [{"role": "user", "content": "hello"}]


def call(
    live_server, key: str | None, path: str = "/v1/chat/completions", body: dict | None = None, method: str = "POST"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}".strip()} if key is not None else {}
    return httpx.request(
        method, f"{live_server.base_url}{path}", headers=headers, timeout=60, json=body if method == "POST" else None
    )


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


@pytest.mark.parametrize("key", [None, "", "sk-wrong", f"{API_KEY}x"])
def test_missing_or_wrong_key_is_401_on_every_api_route(live_server, key):
    body = {"model": TEXT, "messages": HELLO, "max_tokens": 2}
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/default"),
        ("GET", "/v1/metrics"),
        ("GET", "/metrics"),
        ("GET", "/v1/metadata"),
        ("GET", "/v1/nowhere"),
        ("POST", "/v1/chat/completions/batch"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("POST", "/invocations"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/resp_x"),
        ("POST", "/v1/responses/resp_x/cancel"),
    ):
        response = call(live_server, key, path, body, method)
        error = assert_openai_error(response, 401, "invalid_api_key")
        assert error["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"


def test_health_routes_stay_open(live_server):
    for path in ("/v1/health/live", "/v1/health/ready", "/health", "/ping", "/version"):
        assert call(live_server, None, path, method="GET").status_code == 200


def test_valid_keys_are_accepted_and_never_echoed(live_server):
    response = call(live_server, API_KEY, body={"model": TEXT, "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 200
    metrics = call(live_server, API_KEY, "/metrics", method="GET").text
    assert API_KEY not in metrics and LIMITED_KEY not in metrics and API_KEY not in response.text


def test_tenant_rate_limit_is_429_with_retry_after_and_skips_the_engine(live_server):
    body = {"model": TEXT, "messages": HELLO, "max_tokens": 1}
    statuses = [call(live_server, LIMITED_KEY, body=body).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    started = time.monotonic()
    response = call(live_server, LIMITED_KEY, body=body)
    assert time.monotonic() - started < 1.0  # refused at the router, no engine work
    assert_openai_error(response, 429, "rate_limited_requests")
    assert int(response.headers["retry-after"]) >= 1
    # Other tenants are not affected.
    assert call(live_server, API_KEY, body=body).status_code == 200


def test_admission_bound_rejects_overflow_fast(live_server):
    # tiny-phimoe admits 4 in flight per router replica; 12 long streams at once overfill it.
    body = {"model": MOE, "messages": HELLO, "max_tokens": 1000, "ignore_eos": True}

    def one(_: int) -> tuple[int, float, str]:
        started = time.monotonic()
        response = call(live_server, API_KEY, body=body)
        code = response.json()["error"]["code"] if response.status_code != 200 else ""
        return response.status_code, time.monotonic() - started, code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    ok = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    assert len(ok) + len(rejected) == 12
    assert 4 <= len(ok) < 12 and rejected
    assert all(code == "queue_full" for _, _, code in rejected)
    assert max(seconds for _, seconds, _ in rejected) < min(seconds for _, seconds, _ in ok)
    text = live_server.http.get("/metrics").text
    assert f'slmserve_rejected_requests_total{{base_model="{MOE}",model_name="{MOE}",reason="queue_full"}}' in text


def test_body_over_the_limit_is_413(live_server):
    big = {"model": TEXT, "messages": [{"role": "user", "content": "x" * (9 * 2**20)}]}
    assert_openai_error(call(live_server, API_KEY, body=big), 413, "request_too_large")


def test_stream_past_its_deadline_is_aborted_with_an_error_event(live_server):
    engine = live_server.engine_handle(TEXT)
    body = {"model": TEXT, "messages": HELLO, "max_tokens": 1900, "ignore_eos": True, "stream": True}
    started = time.monotonic()
    with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert 25 < time.monotonic() - started < 60  # the test catalog's 30 s deadline
    assert '"code": "timeout"' in lines[-2] and lines[-1] == "data: [DONE]"
    deadline = time.monotonic() + 15
    while engine.num_unfinished_requests.remote().result() != 0:
        assert time.monotonic() < deadline, "the engine kept generating past the deadline"
        time.sleep(0.2)
