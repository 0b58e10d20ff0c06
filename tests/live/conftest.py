"""Session fixtures: the real slmserve application (local Ray, Ray Serve, vLLM CPU engines of the
test catalog), started once and called over HTTP the way users call it."""

from __future__ import annotations

import os
import time
import urllib.error
from collections.abc import Iterator

import pytest

from services.core.catalog import load_catalog
from services.core.settings import Settings, resolve_catalog_path
from testkit.live import (
    API_KEY,
    AUTH,
    LIMITED_KEY,
    READY_TIMEOUT_S,
    TEST_CATALOG,
    LiveServer,
    fresh_start_burst,
    post_json,
    ready_status,
)


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
                status, headers = ready_status(base_url)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        early_chat = post_json(
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
