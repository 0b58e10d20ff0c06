"""Scale to zero on CPU (issue 29): a model whose `autoscaling_config.min_replicas` is 0 starts with no
engine replica, holds a burst of requests while Serve starts one, answers them all, and goes back to
zero once idle, while a neighbour model keeps answering. A second model whose hold is shorter than a
replica's start answers 503 `model_not_ready` with Retry-After. Called with the `openai` client."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from testkit.idle_models import at_zero
from testkit.serving import ServerProcess, catalog_variant, running_replicas, serving, until

pytestmark = pytest.mark.live
HELD, IMPATIENT, NEIGHBOUR = "held-smollm2", "impatient-smollm2", "smollm2-135m-instruct"
BURST = 8
HOLD_S = 240  # far above a replica's start on a busy 2-core machine
TO_ZERO_S = 5  # idle time before the last replica goes
QUESTION = [{"role": "user", "content": "The capital of France is"}]


def three_models(catalog: dict) -> None:
    neighbour = catalog["models"][0]
    neighbour["env"] = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    neighbour["engine_args"]["kv_cache_memory_bytes"] = 134217728
    neighbour["deployment"]["ray_actor_options"] = {"num_cpus": 0.5}
    catalog["models"] += [at_zero(neighbour, HELD, HOLD_S, TO_ZERO_S), at_zero(neighbour, IMPATIENT, 2, TO_ZERO_S)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with serving(catalog_variant("cpu", three_models)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=HOLD_S + 60)


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
    assert running_replicas(server.base_url).get(HELD, 0) == 0
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
    assert running_replicas(server.base_url)[HELD] == 1  # one start for the whole burst
    assert client.models.retrieve(HELD).model_extra["state"] == "running"


def test_the_model_goes_back_to_zero_when_idle(server):
    """(A second hold from zero costs another replica start: loadtests/scale_to_zero.py measures rounds.)"""
    gone = until(lambda: running_replicas(server.base_url).get(HELD, 0) == 0, timeout_s=TO_ZERO_S + 90)
    assert gone is not None, "still running long after its delay to zero"
    print(f"back to zero {gone:.1f} s after the burst's test")
    states = {
        card["id"]: card["state"] for card in httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"]
    }
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
