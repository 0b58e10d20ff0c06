"""The idle-sleep policy of a GPU engine (services/engine/idle_sleep.py) on its own: when it sleeps,
that requests share one wake, and that it never sleeps under a request. vLLM's sleep and wake are
stood in for by coroutines that record their calls (vLLM's sleep mode needs CUDA; the live proof is
loadtests/gpu/run_gpu_sleep.py on the GPU machine)."""

from __future__ import annotations

import asyncio

from services.engine.idle_sleep import IdleSleep


class Engine:
    def __init__(self, fail_sleep: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_sleep = fail_sleep

    async def sleep(self) -> None:
        await asyncio.sleep(0.01)
        if self.fail_sleep:
            raise RuntimeError("cannot sleep now")
        self.calls.append("sleep")

    async def wake(self) -> None:
        await asyncio.sleep(0.05)
        self.calls.append("wake")


def test_an_idle_engine_sleeps_once_and_concurrent_requests_share_one_wake():
    engine = Engine()

    async def scenario() -> list[str]:
        idle = IdleSleep(engine.sleep, engine.wake, after_s=0.1, check_period_s=0.02)
        task = asyncio.create_task(idle.run_forever())
        await asyncio.sleep(0.3)
        assert idle.asleep and engine.calls == ["sleep"]  # once, however long it stays idle

        async def request() -> None:
            async with idle.serving():
                assert not idle.asleep
                await asyncio.sleep(0.01)

        await asyncio.gather(*(request() for _ in range(5)))
        assert len(idle.drain_wakes()) == 1 and idle.drain_wakes() == []
        task.cancel()
        return engine.calls

    assert asyncio.run(scenario()) == ["sleep", "wake"]


def test_it_never_sleeps_under_a_request_however_long_that_runs():
    engine = Engine()

    async def scenario() -> None:
        idle = IdleSleep(engine.sleep, engine.wake, after_s=0.05, check_period_s=0.01)
        task = asyncio.create_task(idle.run_forever())
        async with idle.serving():
            await asyncio.sleep(0.3)  # six idle periods long
            assert not idle.asleep and engine.calls == []
        await asyncio.sleep(0.02)
        assert not idle.asleep  # its idle period starts when the request ends
        await asyncio.sleep(0.1)
        assert idle.asleep
        task.cancel()

    asyncio.run(scenario())


def test_an_engine_that_cannot_sleep_stays_awake_and_serves():
    engine = Engine(fail_sleep=True)

    async def scenario() -> None:
        idle = IdleSleep(engine.sleep, engine.wake, after_s=0.05, check_period_s=0.01)
        task = asyncio.create_task(idle.run_forever())
        await asyncio.sleep(0.2)
        assert not idle.asleep
        async with idle.serving():
            pass
        assert engine.calls == [] and idle.drain_wakes() == []
        task.cancel()

    asyncio.run(scenario())
