"""Direct mode, end to end: a three-model catalog behind one base URL, every model's engine replica
its own HTTP server, HAProxy placing each request on its model's application by the body's `model`
(issue 28), the platform application answering the control routes and what HAProxy cannot place.

The module starts a second, real instance of the test catalog with `slmserve serve` on the direct
plane (the session application serves it routed), on its own port and with its own API key, next
to the session's application (issue 16's finding 2: two instances on one machine must never answer
for each other, before or after both are ready)."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.core.catalog import load_catalog
from services.core.layout import INTERNAL_PREFIX
from services.engine.vllm_compat import WORKER_PROCESS_TITLE
from testkit.exposition import Exposition
from testkit.live import AUTH, BURST_HANG_S, READY_TIMEOUT_S, TEST_CATALOG, fresh_start_burst, long_stream
from testkit.serving import catalog_variant, serving

CATALOG = load_catalog(TEST_CATALOG)
MODELS = [entry.name for entry in CATALOG.models]
MODEL = MODELS[0]  # smollm2-135m-instruct
DIRECT_KEY = "sk-direct-only"
DIRECT_AUTH = {"Authorization": f"Bearer {DIRECT_KEY}"}


@dataclass
class DirectServer:
    base_url: str
    early: dict  # what a request sent during the engine's load got, with the *other* instance's key
    first_burst: list[tuple[int, float]]
    session: int  # the Linux session of `slmserve serve` and every process it started

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


SIDE_MODELS = MODELS[1:]  # tiny MoE and vision: here on the platform's core once their engines run


def _direct_with_side_models_on_the_platform(catalog: dict) -> None:
    """The test catalog on the default (direct) plane, its side models placed as a user of a small
    machine would place them (`cpu_placement: platform`). The session application keeps them on every
    core: its long MoE streams must finish within the catalog's deadline."""
    catalog["edge"].pop("data_plane")
    for model in catalog["models"]:
        if model["name"] in SIDE_MODELS:
            model["cpu_placement"] = "platform"


@pytest.fixture(scope="module")
def direct_server(live_server) -> Iterator[DirectServer]:
    early: dict = {}
    threads: list[threading.Thread] = []

    def send_early(base_url: str) -> None:
        threads.append(threading.Thread(target=_send_early, args=(base_url, early), daemon=True))
        threads[0].start()

    keys = f"direct:{DIRECT_KEY}"
    catalog = catalog_variant(str(TEST_CATALOG), _direct_with_side_models_on_the_platform)
    with serving(catalog, api_keys=keys, ready_timeout_s=READY_TIMEOUT_S, on_start=send_early) as server:
        burst = fresh_start_burst(server.base_url, DIRECT_AUTH, MODEL)
        threads[0].join(60)
        yield DirectServer(server.base_url, early, burst, os.getsid(server.process.pid))


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
    unknown = http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
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
    assert [card["id"] for card in http.get("/v1/models").json()["data"]] == MODELS
    assert http.get("/v1/health/ready").json() == {"status": "ready", "models": dict.fromkeys(MODELS, True)}
    assert "time_to_first_token_seconds_bucket" in http.get("/metrics").text


def test_a_client_that_leaves_mid_stream_stops_the_engine(direct_server):
    http = direct_server.http
    body = long_stream(MODEL, 1500)
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
    assert max(seconds for _, seconds in direct_server.first_burst) < BURST_HANG_S, direct_server.first_burst
    assert statuses.count(200) == 21 and statuses.count(400) == 12 and set(statuses) == {200, 400, 404}, statuses


def test_two_instances_never_answer_for_each_other(direct_server, live_server):
    # During the direct instance's load, a request to it carrying the session instance's key was
    # refused by the direct instance itself (its platform, or the engine once up): never served by
    # the session's instance.
    assert direct_server.early.get("status") == 401, direct_server.early
    assert direct_server.early.get("served_by") in ("platform", "engine")
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
    assert direct_models == session_models == set(MODELS)
    assert live_server.http.get("/v1/models").headers["x-slmserve-served-by"] == "router"


def _vllm_replicas(metrics: str) -> dict[str, str]:
    """Engine replica id -> the model its vLLM engine serves, from vLLM's own series on /metrics."""
    replicas = {}
    for family in text_string_to_metric_families(metrics):
        if family.name.startswith("vllm:"):
            for sample in family.samples:
                if "replica" in sample.labels and "model_name" in sample.labels:
                    replicas[sample.labels["replica"]] = sample.labels["model_name"]
    return replicas


def _placed(metrics: str) -> dict[str, float]:
    """Requests the platform application placed, by model (slmserve_platform_placed_requests_total)."""
    return Exposition.parse(metrics).by("model_name", "slmserve_platform_placed_requests_total")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_streams_from_its_own_engine_process(direct_server, model):
    http = direct_server.http
    placed_before = _placed(http.get("/metrics").text).get(model, 0)
    entry = CATALOG.resolve(model)
    assert entry is not None
    replicas = set()
    for name in entry.names:  # the name and every alias reach the same engine, directly
        body = {"model": name, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 8, "stream": True}
        body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200 and response.headers["x-slmserve-served-by"] == "engine"
            frames = [line for line in response.iter_lines() if line.startswith("data: ")]
            replicas.add(response.headers["x-slmserve-replica"])
        chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames[:-1]]
        assert frames[-1] == "data: [DONE]" and chunks[-1]["usage"]["completion_tokens"] == 8
        assert {chunk["model"] for chunk in chunks} == {model}
        # token by token, not coalesced: every token of the real model is text; a tiny random model's
        # may not be (vLLM sends no chunk for a token whose text is still incomplete)
        assert sum(1 for chunk in chunks if chunk["choices"]) >= (8 if model == MODEL else 2)
    assert len(replicas) == 1
    (replica,) = replicas
    # The replica that answered runs this model's vLLM engine (its series carry the replica's id),
    # and the platform application placed none of these requests: it saw no token of them.
    deadline = time.monotonic() + 10
    while _vllm_replicas(http.get("/metrics").text).get(replica) != model:
        assert time.monotonic() < deadline, f"replica {replica} does not run {model}'s engine"
        time.sleep(0.5)
    assert _placed(http.get("/metrics").text).get(model, 0) == placed_before


def test_the_platform_keeps_off_the_cores_vllm_computes_on(direct_server):
    """What slmserve adds to vLLM (Ray's daemons, Serve's actors, HAProxy) runs on the core vLLM's
    CPU worker leaves free; vLLM's own processes (the engine replica that hosts its frontend, its
    engine core, its worker) are placed as under bare `vllm serve` (the test catalog says `nobind`:
    every core), except the side models', which this server's catalog places on the platform's core."""
    members = [process for process in psutil.process_iter() if _session_of(process) == direct_server.session]
    every = os.sched_getaffinity(0)
    platform = {max(every)} if len(every) > 1 else every
    vllm_pids: set[int] = set()  # every model's replica and its descendants
    for entry in CATALOG.models:
        (replica,) = [process for process in members if f":{entry.deployment_name}" in _command(process)]
        processes = [replica, *replica.children(recursive=True)]
        vllm_pids |= {process.pid for process in processes}
        where = platform if entry.name in SIDE_MODELS else every
        assert all(_thread_cpus(process) == where for process in processes), entry.name
    workers = [process for process in members if WORKER_PROCESS_TITLE in _command(process)]
    assert len(workers) == len(MODELS) and {worker.pid for worker in workers} <= vllm_pids
    added = {cpu for process in members if process.pid not in vllm_pids for cpu in _thread_cpus(process)}
    assert added == platform


def _session_of(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


def _thread_cpus(process: psutil.Process) -> set[int]:
    """The cores any thread of `process` may run on (psutil reads the main thread's only)."""
    cpus: set[int] = set()
    try:
        threads = process.threads()
    except psutil.Error:  # ended meanwhile
        return cpus
    for thread in threads:
        try:
            cpus |= os.sched_getaffinity(thread.id)
        except OSError:  # ended meanwhile
            continue
    return cpus


def test_what_haproxy_cannot_place_the_platform_answers(direct_server):
    http = direct_server.http
    before = _placed(http.get("/metrics").text)
    unknown = http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
    assert unknown.status_code == 404 and unknown.headers["x-slmserve-served-by"] == "platform"
    assert unknown.json()["error"]["code"] == "model_not_found"
    missing = http.post("/v1/completions", json={"prompt": "hi"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    assert missing.headers["x-slmserve-served-by"] == "platform"
    # `model` after a body larger than HAProxy's buffer: the platform places it, through a handle.
    padding = "x " * 150_000  # 300 kB of message, then `model`
    large = {"messages": [{"role": "user", "content": padding}], "max_tokens": 1, "model": "moe"}
    answered = http.post("/v1/chat/completions", json=large)
    assert answered.headers["x-slmserve-served-by"] == "platform"
    assert answered.status_code == 400 and "context length" in answered.json()["error"]["message"]  # the engine's own
    after = _placed(http.get("/metrics").text)
    assert after.get("none", 0) - before.get("none", 0) == 2
    assert after.get("tiny-phimoe", 0) - before.get("tiny-phimoe", 0) == 1


PROTECTED = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{MODEL}"),
    ("GET", "/v1/metadata"),
    ("GET", "/v1/version"),
    ("GET", "/v1/metrics"),
    ("GET", "/metrics"),
    ("POST", "/v1/chat/completions/batch"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/invocations"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_x"),
    ("POST", "/v1/responses/resp_x/cancel"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_protected_route_demands_the_key_under_every_prefix(direct_server, method, path):
    """Through HAProxy, a request without the key is refused on every protected route, whichever
    application HAProxy places it on. A client that sends an internal prefix itself reaches nothing:
    HAProxy refuses the path before placing anything, with or without a key."""
    base = direct_server.base_url
    for model in MODELS:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 1}
        plain = httpx.request(method, f"{base}{path}", json=body if method == "POST" else None, timeout=30)
        assert plain.status_code == 401, (model, plain.text)
        assert plain.json()["error"]["code"] == "invalid_api_key"
        for prefix in (f"{INTERNAL_PREFIX}/{model}", INTERNAL_PREFIX, f"{INTERNAL_PREFIX}/no-such-app"):
            for headers in ({}, DIRECT_AUTH):
                forged = httpx.request(
                    method,
                    f"{base}{prefix}{path}",
                    json=body if method == "POST" else None,
                    headers=headers,
                    timeout=30,
                )
                assert forged.status_code == 404, (prefix, headers, forged.text)
                assert forged.json()["error"]["code"] == "route_not_found"
