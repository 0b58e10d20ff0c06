"""The service-class and tracing tests of the one-engine instance (instance.py), called with the
`openai` client as each tenant would.

Request traces (issue 19): the catalog's `tracing.otlp_traces_endpoint` points at an OTLP/HTTP
receiver in this package (otlp.py). One request gives one trace that holds the edge's spans and vLLM's
engine span, under the client's own `traceparent` when it sends one.

Service classes (issue 30): the engine runs one sequence at a time, with two tenants, `app`
(interactive) and `nightly` (batch). An interactive request overtakes batch work waiting in vLLM's
own queue; a request beyond the model's in-flight bound waits for a slot instead of a 429; and each
tenant's metered tokens are exactly the `usage` its answers carried, as `slmserve usage` reports them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest

from services.cli import main as slmserve
from testkit.serving import ServerProcess

from .instance import KEYS, MODEL
from .otlp import spans_of

pytestmark = pytest.mark.live
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


def test_one_trace_holds_the_edges_and_the_engines_spans_under_the_clients_parent(server, receiver):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS["app"], max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        stream=True,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
    )
    assert [chunk for chunk in stream]
    spans = spans_of(
        receiver, CLIENT_TRACE, {"slmserve.chat", "slmserve.admission", "slmserve.engine.head", "llm_request"}
    )
    by_name = {span.name: span for span in spans}
    request = by_name["slmserve.chat"]
    assert request.service == "slmserve" and request.parent_id == CLIENT_PARENT
    assert by_name["slmserve.admission"].parent_id == request.span_id
    assert by_name["slmserve.engine.head"].parent_id == request.span_id
    assert by_name["llm_request"].parent_id == request.span_id  # vLLM's engine span, exported by vLLM
    assert by_name["llm_request"].service == "vllm"


def test_without_a_traceparent_the_edge_starts_the_trace_and_the_engine_joins_it(server, receiver):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS["app"], max_retries=0)
    before = {span.trace_id for span in receiver.spans}
    client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = {span.trace_id for span in receiver.spans if span.name == "slmserve.completions"} - before
        if new:
            break
        time.sleep(0.5)
    (trace_id,) = new
    spans = spans_of(receiver, trace_id, {"slmserve.completions", "llm_request"})
    request = next(span for span in spans if span.name == "slmserve.completions")
    assert request.parent_id == ""  # a root: the client sent no parent
    assert next(span for span in spans if span.name == "llm_request").parent_id == request.span_id


def test_a_rejected_request_is_traced_too(server, receiver):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS["app"], max_retries=0)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
    (request,) = spans_of(receiver, trace_id, {"slmserve.chat"})
    assert request.parent_id == "b7ad6b7169203331"


def client_of(server: ServerProcess, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS[tenant], max_retries=0, timeout=180)


@dataclass
class Streamed:
    first_token_at: float
    prompt_tokens: int
    completion_tokens: int


def stream(
    client: openai.OpenAI, max_tokens: int, started: threading.Event | None = None, priority: int | None = None
) -> Streamed:
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story about the sea."}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True} if priority is None else {"ignore_eos": True, "priority": priority},
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
    """Two batch streams reach the engine (one runs, one waits in vLLM's queue, having asked for the
    interactive class's priority 0, which its tenant may not have); the interactive one that follows
    is scheduled before the waiting batch one; a third batch request, beyond what batch may hold while
    interactive is active (6 - 4 kept for interactive), waits for a slot: no 429."""
    before, waited_before = metered(server), queue_seconds(server)
    app, nightly = client_of(server, "app"), client_of(server, "nightly")
    running = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        long_batch = pool.submit(stream, nightly, 160, running)
        assert running.wait(120)  # the engine's one sequence is taken
        waiting_batch = pool.submit(stream, nightly, 8, priority=0)  # as early as interactive, if it could
        time.sleep(0.5)  # queued in vLLM behind the long one
        interactive = pool.submit(stream, app, 8)
        time.sleep(0.5)
        beyond_bound = pool.submit(stream, nightly, 4)
        assert not long_batch.done(), "the long stream ended before the bound was reached"
        answers = {
            "long": long_batch.result(),
            "batch": waiting_batch.result(),
            "app": interactive.result(),
            "beyond": beyond_bound.result(),
        }
    assert answers["app"].first_token_at < answers["batch"].first_token_at  # 0 before 10: the raise was refused
    time.sleep(1.5)  # the edge ships its records to the hub twice a second
    assert queue_seconds(server) - waited_before > 0.5  # the third batch request waited for a slot
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
