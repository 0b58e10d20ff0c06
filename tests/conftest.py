"""Session fixtures: the real slmserve application (local Ray, Ray Serve, vLLM CPU engine,
SmolLM2), started once and called over HTTP the way users call it."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.catalog import Catalog, load_catalog
from services.settings import Settings, resolve_catalog_path

# The session application: three tiny models of the three families (a fixture, not a shipped catalog).
TEST_CATALOG = Path(__file__).resolve().parent / "catalogs" / "test.yaml"
READY_TIMEOUT_S = float(os.environ.get("SLMSERVE_TEST_READY_TIMEOUT", "600"))
# The live application runs with API keys on, as a shared deployment would: clients send them.
API_KEY = "sk-test-key"
LIMITED_KEY = "sk-limited-key"  # tenant "limited": 3 requests a minute in the test catalog
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _ready_status(base_url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/health/ready", timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def _post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **AUTH}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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

        from services.limits import has_limits

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


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    from services import runtime

    environment = dict(os.environ)  # the keys below and start_local's switches are the session's only
    os.environ["SLMSERVE_API_KEYS"] = f"tests:{API_KEY},limited:{LIMITED_KEY}"
    catalog_name = os.environ.get("SLMSERVE_TEST_CATALOG", str(TEST_CATALOG))
    settings = Settings(catalog=catalog_name, port=runtime.free_ports(1)[0])
    catalog = load_catalog(resolve_catalog_path(settings.catalog))
    base_url = f"http://{settings.host}:{settings.port}"
    started = time.monotonic()
    runtime.start_local(settings, catalog, wait=False)
    try:
        # The router comes up in seconds, the engine in tens of seconds: catch the gap.
        deadline = time.monotonic() + 120
        status, headers = 0, {}
        while time.monotonic() < deadline:
            try:
                status, headers = _ready_status(base_url)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        early_chat = _post_json(
            f"{base_url}/v1/chat/completions",
            {"model": catalog.models[0].name, "messages": [{"role": "user", "content": "hi"}]},
        )
        runtime.wait_until_ready(base_url, READY_TIMEOUT_S)
        startup_seconds = time.monotonic() - started
        burst = fresh_start_burst(base_url, AUTH, catalog.models[0].name)
        yield LiveServer(base_url, settings, catalog, status, headers, early_chat, startup_seconds, burst)
    finally:
        runtime.shutdown()
        os.environ.clear()
        os.environ.update(environment)


@pytest.fixture(scope="session")
def client(live_server: LiveServer):
    import openai

    return openai.OpenAI(base_url=live_server.api_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def async_client(live_server: LiveServer):
    """A fresh AsyncOpenAI client per test: its connection pool belongs to that test's event loop."""
    import openai

    return openai.AsyncOpenAI(base_url=live_server.api_url, api_key=API_KEY, max_retries=0, timeout=180)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that uses the live server is `live`; `make unit` deselects those.
    for item in items:
        if "live_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live)
    # Tests that kill or delete parts of the session's application run after all others, whatever
    # their file names (a stable sort keeps every other order as collected).
    items.sort(key=lambda item: item.get_closest_marker("disrupts_app") is not None)
