"""Scale to zero on CPU (issue 29): a model whose `autoscaling_config.min_replicas` is 0 starts with no
engine replica, holds a burst of requests while Serve starts one, answers them all, and goes back to
zero once idle, while a neighbour model keeps answering. A second model whose hold is shorter than a
replica's start answers 503 `model_not_ready` with Retry-After. Called with the `openai` client. The
models at zero and their neighbour are the one-engine instance's (instance.py)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from testkit.serving import ServerProcess, running_replicas, until

from .instance import HELD, HOLD_S, IMPATIENT, KEYS, MODEL, TO_ZERO_S

pytestmark = pytest.mark.live
NEIGHBOUR = MODEL
BURST = 8
QUESTION = [{"role": "user", "content": "The capital of France is"}]
KEY = KEYS["app"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=HOLD_S + 60)


def ask(client: openai.OpenAI, model: str) -> tuple[float, str]:
    """Seconds to the first streamed token, and the answer."""
    started = time.monotonic()
    first, text = None, ""
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            text += chunk.choices[0].delta.content
    assert first is not None
    return first, text


def test_a_burst_to_a_model_at_zero_is_held_and_answered_while_its_neighbour_serves(server, client):
    assert running_replicas(server.base_url, KEY).get(HELD, 0) == 0
    assert httpx.get(f"{server.base_url}/v1/health/ready", timeout=10).status_code == 200  # held, not down
    assert client.models.retrieve(HELD).model_extra["state"] == "zero"
    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        burst = [pool.submit(ask, client, HELD) for _ in range(BURST)]
        neighbour = []
        while not all(future.done() for future in burst):  # the neighbour, meanwhile
            neighbour.append(ask(client, NEIGHBOUR)[0])
            time.sleep(1)
        answers = [future.result() for future in burst]
    print(f"held burst: first token after {sorted(s for s, _ in answers)} s; neighbour TTFT {neighbour} s")
    assert len(answers) == BURST and all(text for _, text in answers)
    assert len({text for _, text in answers}) == 1  # one engine, greedy enough for 8 tokens of one question
    assert neighbour and max(neighbour) < 10, neighbour
    assert running_replicas(server.base_url, KEY)[HELD] == 1  # one start for the whole burst
    assert client.models.retrieve(HELD).model_extra["state"] == "running"


def test_the_model_goes_back_to_zero_when_idle(server, client):
    """(A second hold from zero costs another replica start: loadtests/scale_to_zero.py measures rounds.)"""
    gone = until(lambda: running_replicas(server.base_url, KEY).get(HELD, 0) == 0, timeout_s=TO_ZERO_S + 90)
    assert gone is not None, "still running long after its delay to zero"
    print(f"back to zero {gone:.1f} s after the burst's test")
    states = {card.id: card.model_extra["state"] for card in client.models.list().data}
    assert states[NEIGHBOUR] == "running" and states[HELD] in ("zero", "running")  # the router reads every 2 s
    assert httpx.get(f"{server.base_url}/v1/health/ready", timeout=10).status_code == 200


def test_a_request_held_past_the_hold_timeout_gets_503_with_retry_after(server, client):
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=IMPATIENT, messages=QUESTION, max_tokens=2)
    assert raised.value.status_code == 503 and raised.value.body["code"] == "model_not_ready"
    assert int(raised.value.response.headers["retry-after"]) > 0
    assert 2 <= time.monotonic() - started < 30
    assert ask(client, NEIGHBOUR)[1]  # and nothing else was harmed
