"""NIM-vocabulary metrics scraped from the real application after real requests."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from testkit.exposition import Exposition

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
NIM_TYPES = {
    "num_requests_running": "gauge",
    "num_requests_waiting": "gauge",
    "num_request_max": "gauge",
    "gpu_cache_usage_perc": "gauge",
    "prompt_tokens": "counter",
    "generation_tokens": "counter",
    "request_success": "counter",
    "request_failure": "counter",
    "request_finish": "counter",
    "time_to_first_token_seconds": "histogram",
    "time_per_output_token_seconds": "histogram",
    "e2e_request_latency_seconds": "histogram",
    "request_prompt_tokens": "histogram",
    "request_generation_tokens": "histogram",
}


def scrape(live_server, path: str = "/metrics") -> dict[str, object]:
    response = live_server.http.get(path, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families, sample_name: str, **labels: str) -> float:
    """The sum of the samples called `sample_name` with `labels` (0 when none), as the load tools read it."""
    return Exposition(tuple(sample for family in families.values() for sample in family.samples)).total(
        sample_name, **labels
    )


def wait_for(live_server, sample_name: str, expected: float, **labels: str):
    """Records reach the hub within a flush period; wait for them, then return the scrape."""
    deadline = time.monotonic() + 10
    while True:
        families = scrape(live_server)
        if value(families, sample_name, **labels) >= expected or time.monotonic() > deadline:
            return families
        time.sleep(0.2)


def test_every_nim_metric_is_exposed_with_its_type(live_server):
    for path in ("/metrics", "/v1/metrics"):
        families = scrape(live_server, path)
        for name, kind in NIM_TYPES.items():
            assert name in families, f"{name} missing from {path}"
            assert families[name].type == kind, name
            # The hub renders no `_created` gauges (services/app.py's HUB_ENV): series nothing reads.
            assert f"{name}_created" not in families, f"{name}_created on {path}"
    ttft_buckets = sorted(
        {
            float(s.labels["le"])
            for s in families["time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket") and s.labels.get("model_name") == MODEL
        }
        - {float("inf")}
    )
    if ttft_buckets:  # present once a request was recorded
        assert ttft_buckets == [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]


def test_counts_tokens_and_finish_reasons_match_what_clients_saw(live_server, client):
    before = scrape(live_server)
    prompt_sum = completion_sum = 0
    reasons: dict[str, int] = {"stop": 0, "length": 0}
    for max_tokens in (30, 1, 30):  # non-streamed: stop, length, stop
        response = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=max_tokens, temperature=0)
        prompt_sum += response.usage.prompt_tokens
        completion_sum += response.usage.completion_tokens
        reasons[response.choices[0].finish_reason] += 1
    for max_tokens in (30, 1, 2):  # streamed: stop, length, length
        finish, usage = None, None
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        prompt_sum += usage.prompt_tokens
        completion_sum += usage.completion_tokens
        reasons[finish] += 1
    assert reasons["stop"] >= 2 and reasons["length"] >= 3, reasons  # both kinds present
    n = 6
    m = {"model_name": MODEL}
    after = wait_for(live_server, "request_success_total", value(before, "request_success_total", **m) + n, **m)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **m, **labels) - value(before, name, **m, **labels)

    assert delta("request_success_total") == n
    assert delta("request_failure_total") == 0
    assert delta("prompt_tokens_total") == prompt_sum
    assert delta("generation_tokens_total") == completion_sum
    assert delta("request_finish_total", finished_reason="stop") == reasons["stop"]
    assert delta("request_finish_total", finished_reason="length") == reasons["length"]
    for histogram in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
    ):
        assert delta(f"{histogram}_count") == n, histogram
    assert delta("request_prompt_tokens_sum") == prompt_sum
    assert delta("request_generation_tokens_sum") == completion_sum
    assert 0 < delta("time_to_first_token_seconds_sum") <= delta("e2e_request_latency_seconds_sum")


def test_failed_request_counts_as_failure(live_server):
    m = {"model_name": MODEL}
    before = scrape(live_server)
    response = live_server.http.post(
        "/v1/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": "word " * 3000}]},
    )
    assert response.status_code == 400
    after = wait_for(live_server, "request_failure_total", value(before, "request_failure_total", **m) + 1, **m)
    assert value(after, "request_failure_total", **m) - value(before, "request_failure_total", **m) == 1
    assert value(after, "request_success_total", **m) == value(before, "request_success_total", **m)


def test_router_counts_routes_and_rejections(live_server):
    before = scrape(live_server)
    live_server.http.post("/v1/chat/completions", json={"model": "ghost", "messages": FRANCE})
    after = wait_for(
        live_server,
        "slmserve_rejected_requests_total",
        value(before, "slmserve_rejected_requests_total", reason="model_not_found") + 1,
        reason="model_not_found",
    )
    assert (
        value(after, "slmserve_rejected_requests_total", reason="model_not_found")
        - value(before, "slmserve_rejected_requests_total", reason="model_not_found")
        == 1
    )
    assert value(after, "slmserve_http_requests_total", route="/v1/chat/completions", status_code="404") >= 1
    assert value(after, "slmserve_model_ready", model_name=MODEL) == 1
    assert value(after, "slmserve_model_replicas", model_name=MODEL, state="RUNNING") == 1


def test_engine_gauges_and_vllm_series(live_server):
    deadline = time.monotonic() + 15
    while True:  # idle: running and waiting return to 0 (engine snapshots arrive once a second)
        families = scrape(live_server)
        idle = (
            value(families, "num_requests_running", model_name=MODEL) == 0
            and value(families, "num_requests_waiting", model_name=MODEL) == 0
        )
        settled = value(families, "vllm:request_success_total", model_name=MODEL) >= 6
        if (idle and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert idle
    assert value(families, "num_request_max", model_name=MODEL) == 64  # max_num_seqs in the cpu catalog
    assert 0 <= value(families, "gpu_cache_usage_perc", model_name=MODEL) <= 1
    vllm_success = families["vllm:request_success"]
    assert vllm_success.samples and all("replica" in s.labels for s in vllm_success.samples)
    assert value(families, "vllm:request_success_total", model_name=MODEL) >= 6
    from services.metrics.definitions import VLLM_SERIES_ON_DASHBOARD

    exposed = {sample.name for family in families.values() for sample in family.samples}
    assert VLLM_SERIES_ON_DASHBOARD <= exposed, VLLM_SERIES_ON_DASHBOARD - exposed


def test_kv_cache_gauge_moves_under_load(live_server):
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 400, "stream": True, "ignore_eos": True}
    peak = 0.0
    with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: [DONE]"):
                break
            if time.monotonic() % 1 < 0.05:  # sample now and then, not on every token
                peak = max(peak, value(scrape(live_server), "num_requests_running", model_name=MODEL))
                if peak >= 1:
                    break  # seen: closing the stream aborts the rest of its 400 tokens
    assert peak == 1
