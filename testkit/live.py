"""The live test application: its catalog and keys, and `LiveServer`, what its tests get to call it
(the session fixture is tests/live/conftest.py)."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.core.catalog import Catalog
from services.core.settings import Settings

# The session application: three tiny models of the three families (a fixture, not a shipped catalog).
TEST_CATALOG = Path(__file__).resolve().parents[1] / "tests" / "catalogs" / "test.yaml"
READY_TIMEOUT_S = float(os.environ.get("SLMSERVE_TEST_READY_TIMEOUT", "600"))
# The live application runs with API keys on, as a shared deployment would: clients send them.
API_KEY = "sk-test-key"
LIMITED_KEY = "sk-limited-key"  # tenant "limited": 3 requests a minute in the test catalog
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def ready_status(base_url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/health/ready", timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **AUTH}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# What a burst's slowest answer must beat: the hang these tests guard against was a 30 s wait in a Serve
# handle that had not heard of the engine's replicas. A first answer right after a start is no hang at
# 6 s: the two fresh clones of 2026-12-07 05:09 and 05:39 UTC read 6.0 s for one on the direct
# three-model catalog, late in the suite on a slower machine (the same test alone: under 5 s). How
# fast first answers are is a benchmark's figure, not this bound's.
BURST_HANG_S = 15.0


def fresh_start_burst(base_url: str, headers: dict[str, str], model: str, rounds: int = 3) -> list[tuple[int, float]]:
    """What a new user does right after a start: a burst of invalid requests mixed with valid ones,
    repeated. Returns (status, seconds) per request; each is bounded at 10 s on the client side.
    Per round 7 requests should succeed (the odd role is the issue's own valid request) and 6 fail."""
    odd_but_valid = {"model": model, "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 4}
    invalid = [
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        {"model": model, "messages": "not a list"},
    ]
    valid = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def send(body: dict) -> tuple[int, float]:
        started = time.monotonic()
        try:
            status = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=10).status_code
        except httpx.TimeoutException:
            status = 0
        return status, time.monotonic() - started

    results: list[tuple[int, float]] = []
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for _ in range(rounds):
            results += pool.map(send, [*invalid, odd_but_valid] * 2 + [valid] * 4)
            results.append(send(valid))  # the lone valid request right after the burst (issue 16's finding 3)
    return results


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    catalog: Catalog
    first_ready_status: int  # /v1/health/ready as seen before the engine finished loading
    first_ready_headers: dict[str, str]
    early_chat: tuple[int, dict]  # a chat request sent while the engine was still loading
    startup_seconds: float
    first_burst: list[tuple[int, float]]  # fresh_start_burst right after the first ready

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @functools.cached_property
    def http(self) -> httpx.Client:
        """An HTTP client for this server that sends the test API key."""
        return httpx.Client(base_url=self.base_url, headers=AUTH, timeout=60)

    def engine_handle(self, model: str):
        from ray import serve

        entry = self.catalog.resolve(model)
        assert entry is not None
        return serve.get_deployment_handle(entry.deployment_name, app_name=self.settings.app_name)

    def wait_until_idle(self, *models: str, timeout_s: float = 30) -> None:
        """Until the engines of `models` (default: all) hold no request and the admission broker
        counts none of theirs in flight. The edge aborts a request in the engine and releases its
        admission ticket in one step, but the release is not awaited: it may reach the broker a
        moment after the engine went idle. A leaked ticket is held far longer than `timeout_s`."""
        from ray import serve

        from services.edge.limits import has_limits

        names = models or tuple(entry.name for entry in self.catalog.models)
        deadline = time.monotonic() + timeout_s
        broker = serve.get_deployment_handle("LimitBroker", app_name=self.settings.app_name)

        def admitted() -> dict[str, int]:  # no broker runs for a catalog without limits
            return broker.in_flight.remote().result() if has_limits(self.catalog) else {}

        for name in names:
            engine = self.engine_handle(name)
            while engine.num_unfinished_requests.remote().result() != 0:
                assert time.monotonic() < deadline, f"{name}'s engine kept working for clients that had left"
                time.sleep(0.2)
            while admitted().get(name, 0) != 0:
                assert time.monotonic() < deadline, f"{name}'s admission slots stayed taken after its requests ended"
                time.sleep(0.2)


def long_stream(model: str, max_tokens: int, content: str = "hello") -> dict:
    """A streamed chat request that generates exactly `max_tokens` tokens (EOS ignored)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
