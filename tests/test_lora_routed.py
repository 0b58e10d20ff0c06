"""A LoRA adapter in the session's multi-model application (routed mode: the Router resolves the
adapter's name through its model's engine deployment); the direct-mode, multi-replica case is in
test_lora_live.py."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import SESSION_ADAPTER

QUESTION = [{"role": "user", "content": "The capital of France is"}]


def greedy(client, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=10, temperature=0)
    return reply.choices[0].message.content or ""


def test_the_adapter_is_listed_under_its_base_beside_every_catalog_model(client, live_server):
    models = {card.id: card for card in client.models.list().data}
    base = live_server.catalog.models[0].name
    assert {entry.name for entry in live_server.catalog.models} | {SESSION_ADAPTER} == set(models)
    assert models[SESSION_ADAPTER].parent == base
    assert client.models.retrieve(SESSION_ADAPTER).parent == base


def test_the_adapter_answers_otherwise_than_its_base_and_the_same_each_time(client, live_server):
    base = greedy(client, live_server.catalog.models[0].name)
    adapted = greedy(client, SESSION_ADAPTER)
    assert adapted != base and greedy(client, SESSION_ADAPTER) == adapted


def test_streams_of_the_adapter_and_its_base_are_counted_apart(client, live_server):
    base = live_server.catalog.models[0].name
    stream = client.chat.completions.create(model=SESSION_ADAPTER, messages=QUESTION, max_tokens=4, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    deadline = time.monotonic() + 10
    wanted = f'request_success_total{{base_model="{base}",model_name="{SESSION_ADAPTER}"}}'  # labels sorted
    while wanted not in live_server.http.get("/metrics").text:
        assert time.monotonic() < deadline, wanted
        time.sleep(0.3)


@pytest.mark.parametrize("name", [f"{SESSION_ADAPTER}-typo", "smollm2:sql"])
def test_a_name_no_model_or_adapter_has_is_404(client, name):
    with pytest.raises(openai.NotFoundError) as raised:
        greedy(client, name)
    assert raised.value.body["code"] == "model_not_found"
