"""Service classes (issue 30) without Ray or vLLM: the catalog block, the fair queue's order, the
broker's waiting, and what the edge does with a request's priority and its tenant's usage. The live
engine's priority scheduling is tests/live/one_engine/test_classes_and_traces.py."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from services.core.catalog import CatalogError, parse_catalog
from services.edge.fair_queue import FairQueue, Waiter
from services.edge.limits import Admitted, LimitBroker, Refused
from testkit.fake_engine import Answer, ScriptedEngine, Stream, edge_with

CLASSES = {
    "classes": {
        "interactive": {"priority": 0, "share": 3, "max_queued": 8, "queue_timeout_s": 5},
        "batch": {"priority": 10, "share": 1, "max_queued": 2, "queue_timeout_s": 0.3},
    },
    "tenants": {"app": "interactive", "nightly": "batch"},
}
MODELS = [
    {"name": "text", "source": "embedded://smollm2-135m-instruct", "max_in_flight": 1},
    {"name": "other", "source": "org/other", "engine_args": {"max_num_seqs": 4}},
]


def catalog(classes=CLASSES, models=MODELS):
    return parse_catalog({"edge": {"service_classes": classes}, "models": models})


def test_classes_turn_on_priority_scheduling_in_every_engine_and_name_only_known_classes():
    parsed = catalog()
    assert all(entry.engine_args["scheduling_policy"] == "priority" for entry in parsed.models)
    assert parsed.models[1].engine_args["max_num_seqs"] == 4
    assert parsed.edge.service_classes.class_of("stranger")[0] == "batch"  # the lowest priority by default
    assert parsed.edge.service_classes.class_of("app")[0] == "interactive"
    assert "scheduling_policy" not in parse_catalog({"models": MODELS}).models[0].engine_args  # no classes: as given
    for classes, message in (
        ({**CLASSES, "tenants": {"app": "gold"}}, "names class 'gold'"),
        ({**CLASSES, "default": "gold"}, "default class 'gold'"),
        ({"tenants": {"app": "batch"}}, "need `classes`"),
        ({"classes": {"x": {"share": 0}}}, "greater than 0"),
    ):
        with pytest.raises(CatalogError, match=message):
            catalog(classes)
    fcfs = [{**MODELS[0], "engine_args": {"scheduling_policy": "fcfs"}}]
    with pytest.raises(CatalogError, match="scheduling_policy must be 'priority'"):
        catalog(models=fcfs)


def test_the_fair_queue_serves_tenants_by_share_and_keeps_each_tenant_s_order():
    queue = FairQueue()
    for _ in range(12):
        queue.push(Waiter("heavy", "batch", 1.0, on_grant=lambda: None))
        queue.push(Waiter("light", "interactive", 3.0))
    first_eight = [queue.pop() for _ in range(8)]
    assert Counter(waiter.tenant for waiter in first_eight) == {"light": 6, "heavy": 2}  # 3 : 1
    assert queue.waiting() == 16 and queue.waiting("batch") == 10


def test_a_tenant_back_from_idle_starts_level_instead_of_cashing_in_credit():
    queue = FairQueue()
    for _ in range(20):  # "busy" alone gets every slot, and no debt for it
        queue.charge("busy", 1.0)
    queue.push(Waiter("returning", "batch", 1.0))
    for _ in range(3):
        queue.push(Waiter("busy", "batch", 1.0))
    order = [queue.pop().tenant for _ in range(4)]
    assert order[0] == "returning" and order.count("returning") == 1  # first, then no run of credit


def test_the_broker_queues_at_the_bound_grants_by_share_and_refuses_what_cannot_wait():
    async def scenario() -> None:
        broker = LimitBroker(catalog().model_dump(mode="json"), recovery_s=0)
        holder = await broker.admit("text", "nightly", 1)
        assert isinstance(holder, Admitted) and holder.queued_s < 0.1
        waiting = [asyncio.ensure_future(broker.admit("text", tenant, 1)) for tenant in ("nightly", "nightly", "app")]
        await asyncio.sleep(0.01)
        full = await broker.admit("text", "nightly", 1)  # batch may queue 2 per model
        assert isinstance(full, Refused) and full.reason == "queue_full"
        await broker.release(holder.ticket)
        app = await waiting[2]  # came last, but its tenant is furthest below its share: first
        assert isinstance(app, Admitted) and app.queued_s > 0 and not waiting[0].done()
        timed_out = await waiting[0]  # batch waits 0.3 s at most
        assert isinstance(timed_out, Refused) and timed_out.reason == "queue_timeout" and timed_out.retry_after_s >= 1
        await waiting[1]
        assert broker.in_flight()["text"] == 1 and broker.admission.queues["text"].waiting() == 0

    asyncio.run(scenario())


def test_a_waiter_whose_caller_left_gives_its_place_and_its_slot_to_the_next():
    async def scenario() -> None:
        broker = LimitBroker(catalog().model_dump(mode="json"), recovery_s=0)
        holder = await broker.admit("text", "app", 1)
        leaving = asyncio.ensure_future(broker.admit("text", "app", 1))
        staying = asyncio.ensure_future(broker.admit("text", "app", 1))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.sleep(0.01)
        await broker.release(holder.ticket)
        assert isinstance(await staying, Admitted) and broker.in_flight()["text"] == 1

    asyncio.run(scenario())


CHAT = {"model": "other", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_request_gets_its_class_s_priority_and_may_lower_but_never_raise_it(monkeypatch):
    monkeypatch.setenv("SLMSERVE_API_KEYS", "app:sk-app,nightly:sk-night")

    async def send(under_test, key: str, body: dict):
        async with under_test.client(authorization=f"Bearer {key}") as client:
            return await client.post("/v1/chat/completions", json=body)

    engines = {"text": ScriptedEngine(), "other": ScriptedEngine(*[Answer()] * 5)}
    with edge_with(catalog(), engines) as under_test:
        answers = [
            asyncio.run(send(under_test, key, {**CHAT, **extra}))
            for key, extra in (
                ("sk-app", {}),
                ("sk-app", {"priority": 5}),
                ("sk-night", {}),
                ("sk-night", {"priority": 0}),
                ("sk-night", {"priority": 20}),
                ("sk-app", {"priority": "high"}),
            )
        ]
    assert [answer.status_code for answer in answers] == [200] * 5 + [400]
    assert answers[5].json()["error"]["param"] == "priority"
    assert [call.body["priority"] for call in engines["other"].calls] == [0, 5, 10, 10, 20]


def test_a_responses_api_request_gets_its_class_s_priority_too(monkeypatch):
    monkeypatch.setenv("SLMSERVE_API_KEYS", "app:sk-app,nightly:sk-night")
    engines = {"text": ScriptedEngine(), "other": ScriptedEngine(*[Answer()] * 2)}
    with edge_with(catalog(), engines) as under_test:

        async def send(key: str, body: dict):
            async with under_test.client(authorization=f"Bearer {key}") as client:
                return await client.post("/v1/responses", json=body)

        asked = {"model": "other", "input": "hi", "max_output_tokens": 4}
        answers = [asyncio.run(send("sk-night", {**asked, "priority": 0})), asyncio.run(send("sk-app", asked))]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert [(call.route, call.body["priority"]) for call in engines["other"].calls] == [
        ("responses", 10),
        ("responses", 0),
    ]


def test_without_classes_a_body_s_priority_reaches_the_engine_as_sent():
    with edge_with() as under_test:
        asyncio.run(_post(under_test, {**CHAT, "model": "text"}))
        asyncio.run(_post(under_test, {**CHAT, "model": "text", "priority": 3}))
    assert ["priority" in call.body for call in under_test.engines["text"].calls] == [False, True]


async def _post(under_test, body):
    async with under_test.client() as client:
        return await client.post("/v1/chat/completions", json=body)


def test_each_tenant_s_metered_tokens_are_its_answers_usage(monkeypatch):
    from services.engine.protocol import Outcome

    monkeypatch.setenv("SLMSERVE_API_KEYS", "app:sk-app,nightly:sk-night")
    frames = ['data: {"choices":[{"delta":{"content":"a"}}]}\n\n'] * 2
    engines = {
        "text": ScriptedEngine(),
        "other": ScriptedEngine(Answer(outcome=Outcome(7, 2, "stop")), Stream(frames, Outcome(11, 5, "length"))),
    }
    with edge_with(catalog(), engines) as under_test:

        async def calls():
            async with under_test.client(authorization="Bearer sk-app") as client:
                await client.post("/v1/chat/completions", json=CHAT)
            async with under_test.client(authorization="Bearer sk-night") as client:
                await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
                await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            await under_test.edge.records.flush()

        asyncio.run(calls())
    registry = under_test.hub.registry

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("slmserve_tenant_prompt_tokens_total", tenant="app", model_name="other") == 7
    assert value("slmserve_tenant_generation_tokens_total", tenant="app", model_name="other") == 2
    assert value("slmserve_tenant_generation_tokens_total", tenant="nightly", model_name="other") == 5
    assert value("slmserve_tenant_requests_total", tenant="nightly", model_name="other", outcome="success") == 1
    assert value("slmserve_tenant_requests_total", tenant="anonymous", model_name="text", outcome="success") == 0
    from prometheus_client import generate_latest

    from services import usage

    found = usage.from_metrics_text(generate_latest(registry).decode())
    assert (found[("app", "other")].prompt_tokens, found[("app", "other")].completion_tokens) == (7, 2)
    assert found[("nightly", "other")].requests == {"success": 1, "failure": 0, "rejected": 0}
    lines = usage.table(found).splitlines()
    assert lines[-1].split() == ["total", "18", "7"]
    assert len(lines) == 4  # header, app and nightly on `other`, total: series at 0 are left out


def test_usage_over_a_window_needs_prometheus_and_a_prometheus_duration(capsys):
    from services.cli import main

    assert main(["usage", "--since", "1h"]) == 2
    assert "--since needs --prometheus" in capsys.readouterr().err
    assert main(["usage", "--prometheus", "http://127.0.0.1:1", "--since", "1 hour; drop"]) == 2
    assert "Prometheus duration" in capsys.readouterr().err


def test_a_class_always_gets_its_guaranteed_share_of_the_bound_even_while_another_holds_it():
    """Bound 4, shares 3 : 1: interactive is guaranteed 3 slots and batch 1. A batch flood that took
    every slot while interactive was idle does not keep interactive out; the flood's excess waits
    (2 may) or is refused, and gets slots back only below the bound."""
    from services.core.errors import Code
    from services.edge.admission import Rejected

    parsed = catalog(models=[{**MODELS[0], "max_in_flight": 4}, MODELS[1]])
    admission = LimitBroker(parsed.model_dump(mode="json")).admission
    assert (admission.guaranteed("text", "interactive"), admission.guaranteed("text", "batch")) == (3, 1)
    assert [admission.admit("text", "nightly", 1) for _ in range(4)] == [None] * 4  # idle capacity is lent
    queued = [admission.admit("text", "nightly", 1) for _ in range(2)]
    with pytest.raises(Rejected) as refused:
        admission.admit("text", "nightly", 1)
    assert refused.value.reason == Code.QUEUE_FULL
    assert [admission.admit("text", "app", 1) for _ in range(3)] == [None] * 3  # over the bound: guaranteed
    assert admission.admit("text", "app", 1) is not None and admission.in_flight["text"] == 7
    admission.release("text", "nightly")  # still over the bound: nobody's turn
    assert all(waiter.state == "waiting" for waiter in queued)
    admission.release("text", "app")  # interactive is below its guarantee again: its own waiter first
    assert admission.class_in_flight[("text", "interactive")] == 3 and queued[0].state == "waiting"
    for _ in range(3):
        admission.release("text", "nightly")
    assert [waiter.state for waiter in queued] == ["granted", "waiting"]  # below the bound: the fair turn


def test_a_class_active_lately_keeps_its_unused_guarantee_and_an_idle_one_lends_it():
    import time

    from services.core.timing import CLASS_ACTIVE_S

    parsed = catalog(models=[{**MODELS[0], "max_in_flight": 4}, MODELS[1]])
    admission = LimitBroker(parsed.model_dump(mode="json")).admission
    assert admission.admit("text", "app", 1) is None  # interactive is active, then its request ends
    admission.release("text", "app")
    granted = [admission.admit("text", "nightly", 1) is None for _ in range(3)]
    assert granted == [True, False, False]  # 3 of the 4 slots stay interactive's while it is active
    admission.last_active[("text", "interactive")] = time.monotonic() - CLASS_ACTIVE_S - 1
    admission.release("text", "nightly")  # interactive has gone idle: its slots are lent again
    assert admission.in_flight["text"] == 2 and admission.queues["text"].waiting() == 0
