"""Engines sharing a GPU take turns on its memory (services/engine/card_memory.py): the ledger's LRU
choice, and three engines whose shares do not all fit awake, driven through IdleSleep as requests
arrive. The CardMemory class runs in this event loop, reached through `InProcess`, which stands in
for Ray's actor calls (`.remote`); vLLM's sleep and wake are recording coroutines (sleep mode needs
CUDA: the live proof is loadtests/gpu/run_gpu_sleep.py --share on the GPU machine)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from services.core.catalog import CatalogError, parse_catalog
from services.engine.card_memory import CardFull, CardLedger, CardMemory, CardSeat
from services.engine.idle_sleep import IdleSleep


def test_the_least_recently_used_awake_engines_sleep_until_the_wanted_one_fits():
    ledger = CardLedger()
    for name, used in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        ledger.seat(name, 0.3)
        ledger.mark(name, True, used)
    ledger.seat("d", 0.45)
    assert ledger.to_sleep_for("d") == ["b", "c"]  # 0.9 awake: two must go, oldest first
    ledger.seat("e", 0.1)
    assert ledger.to_sleep_for("e") == []  # 0.9 + 0.1 fits
    ledger.seat("huge", 1.2)
    with pytest.raises(CardFull):
        ledger.to_sleep_for("huge")


class InProcess:
    """`actor.method.remote(...)` as an awaitable call on a local object (Ray's actor call, here)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        class Remote:
            @staticmethod
            def remote(*args: Any) -> Any:
                result = method(*args)
                if asyncio.iscoroutine(result):
                    return result
                done = asyncio.get_running_loop().create_future()  # fire-and-forget calls never await it
                done.set_result(result)
                return done

        return Remote


class Engine:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def sleep(self) -> None:
        await asyncio.sleep(0.01)
        self.log.append(f"{self.name} sleeps")

    async def wake(self) -> None:
        await asyncio.sleep(0.01)
        self.log.append(f"{self.name} wakes")


def test_three_engines_of_which_two_fit_take_turns_least_recently_used_first():
    log: list[str] = []

    async def scenario() -> None:
        card = InProcess(CardMemory())
        engines: dict[str, IdleSleep] = {}
        tasks = []
        for name in "abc":
            seat = CardSeat(card, name, 0.45)
            await seat.claim()  # at start: room for the engine's share (c's start puts a to sleep)
            engine = Engine(name, log)
            idle = IdleSleep(engine.sleep, engine.wake, after_s=60, card=seat)
            engines[name] = idle
            tasks.append(asyncio.create_task(idle.obey_card_forever(seat)))
            await asyncio.sleep(0.05)
        assert log == ["a sleeps"] and engines["a"].asleep
        engines["a"].asleep = True  # as its obey loop left it

        async def request(name: str, hold_s: float = 0.01) -> None:
            async with engines[name].serving():
                assert not engines[name].asleep
                await asyncio.sleep(hold_s)

        await request("b")  # b used after c: c is now the least recently used
        await asyncio.sleep(0.01)
        await request("a")  # a wakes: c sleeps for it, b stays awake
        assert log[1:] == ["c sleeps", "a wakes"]
        assert [name for name, idle in engines.items() if not idle.asleep] == ["a", "b"]

        # an engine with a request in flight finishes it before it sleeps for another
        busy = asyncio.create_task(request("b", hold_s=0.2))
        await asyncio.sleep(0.05)
        await request("a")  # a used: b's request is older news than a's
        await request("c")  # c wakes: b is least recently used, and busy
        await busy
        assert log[3:] == ["b sleeps", "c wakes"]  # only after b's request ended
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())


def test_a_wake_that_cannot_get_room_in_time_is_card_full():
    async def scenario() -> None:
        memory = CardMemory()
        await memory.claim("a", 0.6, 1)
        with pytest.raises(CardFull, match="a did not fall asleep"):
            await memory.claim("b", 0.6, 0.05)  # nobody puts `a` to sleep here

    asyncio.run(scenario())


CATALOG = """
version: 1
models:
  - name: m
    source: /models/m
    engine_args: {{gpu_memory_utilization: {share}}}
    deployment: {{ray_actor_options: {{num_gpus: 0.5}}}}
    {idle}
"""


def load_catalog_text(text: str):
    return parse_catalog(yaml.safe_load(text))


def test_the_catalog_refuses_a_card_share_larger_than_the_replicas_part_unless_it_sleeps():
    with pytest.raises(CatalogError, match=r"more than the replica.s 0\.5 of a GPU"):
        load_catalog_text(CATALOG.format(share=0.6, idle=""))
    assert load_catalog_text(CATALOG.format(share=0.45, idle="")).models[0].gpu_share == 0.45
    sleeper = load_catalog_text(CATALOG.format(share=0.6, idle="idle: {sleep_after_s: 60}"))
    assert sleeper.models[0].gpu_share == 0.6


def test_a_wake_that_fails_gives_its_room_back():
    async def scenario() -> None:
        memory = CardMemory()
        card = InProcess(memory)

        async def cannot_wake() -> None:
            raise RuntimeError("CUDA out of memory")

        async def nothing() -> None:
            pass

        idle = IdleSleep(nothing, cannot_wake, after_s=60, card=CardSeat(card, "a", 0.6))
        idle.asleep = True
        with pytest.raises(RuntimeError):
            async with idle.serving():
                pass
        assert idle.asleep and not memory.ledger.tenants["a"].awake
        await memory.claim("b", 0.6, 0.05)  # a's claim did not keep the room

    asyncio.run(scenario())


def test_a_claim_waiting_for_an_engine_that_leaves_the_card_gets_its_room():
    async def scenario() -> None:
        memory = CardMemory()
        await memory.claim("a", 0.6, 1)
        waiting = asyncio.create_task(memory.claim("b", 0.6, 5))
        await asyncio.sleep(0.05)
        await memory.leave("a")  # its replica stopped: its share of the card is free
        assert await waiting == ["a"]

    asyncio.run(scenario())
