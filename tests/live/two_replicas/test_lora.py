"""LoRA adapters end to end (issue 14): PEFT adapters the tests make for the embedded model, served
from a catalog's `lora.adapters_dir` by two real engine replicas (direct mode, the package's
instance), called with the `openai` client by adapter name. Broken adapters sit in the same
directory the whole time. These run before the routing tests (file order): the affinity test needs
the adapters where the engines registered them at start."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter

import httpx
import openai
import pytest

from testkit.exposition import Exposition
from testkit.serving import ServerProcess

from .instance import ADAPTERS, BROKEN, MODEL, REFRESH_S, wait_until

pytestmark = pytest.mark.live
QUESTION = [{"role": "user", "content": "The capital of France is"}]


def served_by(server: ServerProcess, model: str) -> str | None:
    """Who answered a request for `model`: an adapter HAProxy has in its map streams from an engine
    replica ("engine"); until the platform has put it there, the platform answers ("platform")."""
    body = {"model": model, "max_tokens": 1, "messages": QUESTION}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60).headers.get(
        "x-slmserve-served-by"
    )


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)


def answer(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
    return reply.choices[0].message.content or ""


def listed(client: openai.OpenAI) -> dict[str, str | None]:
    return {card.id: getattr(card, "parent", None) for card in client.models.list().data}


def metrics(server: ServerProcess) -> Exposition:
    return Exposition.fetch(f"{server.base_url}/metrics")


def test_requests_for_an_adapter_go_to_the_replica_that_holds_it(server):
    """Each engine caches two of the three adapters, the last two it registered at start (first in this
    module, before other tests move the caches): a request for the third goes to the least loaded
    replica, which then holds it, and that adapter's next requests follow it there."""

    def replica_for(model: str, question: str) -> str:
        body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": question}]}
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json=body)
        assert response.status_code == 200, response.text
        return response.headers["x-slmserve-replica"]

    def decisions() -> Counter[str]:
        return Counter(metrics(server).by("reason", "slmserve_routing_decisions_total", model_name=MODEL))

    before = decisions()
    homes = Counter(replica_for("alpha-r8", f"question {n}") for n in range(8))
    assert len(homes) == 1, homes  # all of one adapter's requests on one replica
    spread = Counter(replica_for(MODEL, f"base question {n}") for n in range(12))
    assert len(spread) == 2, spread  # while base-model requests use both
    time.sleep(1.5)  # the routing metric ships with the ReplicaPicker's next flush
    assert decisions()["adapter_hit"] - before["adapter_hit"] >= 7


def test_models_lists_each_good_adapter_under_its_base_and_no_broken_one(client):
    models = listed(client)
    assert {name: models.get(name) for name in ADAPTERS} == dict.fromkeys(ADAPTERS, MODEL)
    assert MODEL in models and not BROKEN & set(models)
    card = client.models.retrieve("beta-r16")
    assert card.id == "beta-r16" and card.parent == MODEL


def test_an_adapter_changes_the_greedy_answer_the_same_way_every_time(client):
    base = answer(client, MODEL)
    outputs = {name: answer(client, name) for name in ADAPTERS}
    assert all(output != base for output in outputs.values()), (base, outputs)
    assert len(set(outputs.values())) == len(ADAPTERS), outputs  # each adapter is its own
    assert {name: answer(client, name) for name in ADAPTERS} == outputs  # and deterministic
    assert answer(client, MODEL) == base


def test_base_and_adapter_requests_batched_together_each_get_their_own_answer(server, client):
    """Found vLLM's CPU LoRA bug: base-model requests batched with adapter requests got an adapter's
    answer (fixed in slmserve's vLLM plugin, services/engine/vllm_plugin.py)."""
    alone = {name: answer(client, name) for name in (MODEL, "alpha-r8", "beta-r16")}

    async def together() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120
        ) as async_client:

            async def one(model: str) -> tuple[str, str]:
                reply = await async_client.chat.completions.create(
                    model=model, messages=QUESTION, max_tokens=12, temperature=0
                )
                return model, reply.choices[0].message.content or ""

            return await asyncio.gather(*(one(model) for model in list(alone) * 3))

    answers = asyncio.run(together())
    wrong = [(model, text, alone[model]) for model, text in answers if text != alone[model]]
    assert not wrong, wrong


def test_an_unknown_or_broken_adapter_is_404_and_the_replicas_keep_serving(server, client):
    for name in ["no-such-adapter", *sorted(BROKEN)]:
        with pytest.raises(openai.NotFoundError) as raised:
            answer(client, name)
        assert raised.value.body["code"] == "model_not_found", name
    assert httpx.get(f"{server.base_url}/v1/health/ready", timeout=10).status_code == 200
    assert answer(client, "alpha-r8")
    log = server.log.read_text()
    for name in BROKEN:
        assert f"LoRA adapter {name} left out" in log, name
    assert "an adapter of another base model?" in log and "rank 64 is above" in log


def test_an_adapter_added_to_the_directory_is_served_and_one_removed_is_gone(server, client, adapters_dir):
    """Each replica rescans on its own clock: once one lists the change, the other has it within a
    refresh period (CI once sent the next request to the replica that had not rescanned yet)."""
    added = adapters_dir / "delta-r8"
    shutil.move(adapters_dir.parent / "delta-r8", added)
    wait_until(lambda: "delta-r8" in listed(client))
    time.sleep(2 * REFRESH_S)
    assert all(answer(client, "delta-r8") != answer(client, MODEL) for _ in range(2))
    wait_until(lambda: served_by(server, "delta-r8") == "engine")  # HAProxy places it direct now
    shutil.move(added, adapters_dir.parent / "delta-r8")
    wait_until(lambda: "delta-r8" not in listed(client))
    time.sleep(2 * REFRESH_S)
    for _ in range(4):  # whichever replica answers
        with pytest.raises(openai.NotFoundError):
            answer(client, "delta-r8")
    wait_until(lambda: served_by(server, "delta-r8") == "platform")  # out of HAProxy's map: the platform's 404


def test_adapter_requests_are_counted_under_the_adapter_with_their_base(server, client):
    answer(client, "gamma-r8")
    deadline = time.monotonic() + 10
    while True:
        counts = metrics(server).by("base_model", "request_success_total", model_name="gamma-r8")
        if counts or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts.get(MODEL, 0) >= 1, counts
