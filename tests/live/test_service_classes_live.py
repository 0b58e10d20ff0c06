"""Service classes end to end (issue 30): a one-model instance whose engine runs one sequence at a
time, with two tenants, `app` (interactive) and `nightly` (batch), called with the `openai` client
the way each tenant would. An interactive request overtakes batch work waiting in vLLM's own queue;
a request beyond the model's in-flight bound waits for a slot instead of a 429; and each tenant's
metered tokens are exactly the `usage` its answers carried, as `slmserve usage` reports them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest

from services.cli import main as slmserve
from testkit.serving import ServerProcess, catalog_variant, serving

pytestmark = pytest.mark.live
MODEL = "smollm2-135m-instruct"
KEYS = {"app": "sk-app-interactive", "nightly": "sk-nightly-batch"}
IN_FLIGHT = 3


def with_classes(catalog: dict) -> None:
    catalog["edge"]["service_classes"] = {
        "classes": {
            "interactive": {"priority": 0, "share": 3, "max_queued": 4, "queue_timeout_s": 120},
            "batch": {"priority": 10, "share": 1, "max_queued": 4, "queue_timeout_s": 120},
        },
        "tenants": {"app": "interactive", "nightly": "batch"},
    }
    (model,) = catalog["models"]
    model["max_in_flight"] = IN_FLIGHT
    model["engine_args"]["max_num_seqs"] = 1  # one sequence at a time: the rest wait in vLLM's queue


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    keys = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
    with serving(catalog_variant("cpu", with_classes), api_keys=keys) as running:
        yield running


def client_of(server: ServerProcess, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS[tenant], max_retries=0, timeout=180)


@dataclass
class Streamed:
    first_token_at: float
    prompt_tokens: int
    completion_tokens: int


def stream(client: openai.OpenAI, max_tokens: int, started: threading.Event | None = None) -> Streamed:
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story about the sea."}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    first, usage = None, None
    for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
            if started is not None:
                started.set()
        usage = chunk.usage or usage
    assert first is not None and usage is not None
    return Streamed(first, usage.prompt_tokens, usage.completion_tokens)


def metered(server: ServerProcess) -> dict[tuple[str, str], tuple[float, float]]:
    from services import usage

    found = usage.from_platform(server.base_url, KEYS["app"])
    return {key: (row.prompt_tokens, row.completion_tokens) for key, row in found.items()}


def queue_seconds(server: ServerProcess) -> float:
    """Seconds the model's requests waited for an in-flight slot, all tenants together."""
    text = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {KEYS['app']}"}).text
    prefix = "slmserve_tenant_queue_seconds_sum{"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix) and MODEL in line)


def test_interactive_work_overtakes_waiting_batch_work_and_the_bound_holds_requests(server):
    before, waited_before = metered(server), queue_seconds(server)
    app, nightly = client_of(server, "app"), client_of(server, "nightly")
    running = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        long_batch = pool.submit(stream, nightly, 256, running)
        assert running.wait(120)  # the engine's one sequence is taken
        waiting_batch = pool.submit(stream, nightly, 8)
        time.sleep(0.5)  # queued in vLLM behind the long one
        interactive = pool.submit(stream, app, 8)
        time.sleep(0.5)
        beyond_bound = pool.submit(stream, nightly, 4)  # the 4th: waits for a slot, not a 429
        assert not long_batch.done(), "the long stream ended before the bound was reached"
        answers = {
            "long": long_batch.result(),
            "batch": waiting_batch.result(),
            "app": interactive.result(),
            "beyond": beyond_bound.result(),
        }
    assert answers["app"].first_token_at < answers["batch"].first_token_at  # priority 0 before 10
    time.sleep(1.5)  # the edge ships its records to the hub twice a second
    assert queue_seconds(server) - waited_before > 0.5  # one of the four waited for the long one's slot
    after = metered(server)
    for tenant, sent in (("app", [answers["app"]]), ("nightly", [answers[k] for k in ("long", "batch", "beyond")])):
        prompt = sum(s.prompt_tokens for s in sent)
        completion = sum(s.completion_tokens for s in sent)
        previous = before.get((tenant, MODEL), (0.0, 0.0))
        assert after[(tenant, MODEL)] == (previous[0] + prompt, previous[1] + completion), tenant


def test_a_tenant_may_lower_its_priority_and_usage_reports_what_its_answers_said(server, capsys):
    app = client_of(server, "app")
    answer = app.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body={"priority": 50}
    )
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        app.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body={"priority": "first"}
        )
    assert refused.value.body["param"] == "priority"  # type: ignore[index]
    time.sleep(1.5)  # the edge ships its records to the hub twice a second
    assert slmserve(["usage", "--url", server.base_url, "--api-key", KEYS["nightly"]]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in printed[2:-1]}
    prompt, completion = metered(server)[("app", MODEL)]
    assert rows[("app", MODEL)][:2] == [f"{prompt:.0f}", f"{completion:.0f}"]
