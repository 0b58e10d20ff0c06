"""Adaptive coalescing: no delay for a lone item, joined backlog under pressure, order kept,
errors and cancellation propagate to the producer."""

from __future__ import annotations

import asyncio

import pytest

from services.engine.streaming import coalesce


async def collect(source, consumer_delay: float = 0.0) -> list:
    out = []
    async for item in coalesce(source):
        out.append(item)
        await asyncio.sleep(consumer_delay)
    return out


async def produce(items, delay: float = 0.0):
    for item in items:
        await asyncio.sleep(delay)
        yield item


def test_fast_consumer_gets_items_one_by_one():
    assert asyncio.run(collect(produce(["a", "b", "c"], delay=0.01))) == ["a", "b", "c"]


def test_slow_consumer_gets_the_backlog_joined_in_order():
    items = [f"t{i};" for i in range(20)]
    out = asyncio.run(collect(produce(items, delay=0.001), consumer_delay=0.02))
    assert "".join(out) == "".join(items)
    assert len(out) < len(items)


def test_non_string_items_are_never_joined_and_keep_their_place():
    items = ["a", "b", {"outcome": 1}, "c", "d"]
    out = asyncio.run(collect(produce(items), consumer_delay=0.01))
    assert out.index({"outcome": 1}) == 1 or out[out.index({"outcome": 1}) - 1].endswith("b")
    assert "".join(x for x in out if isinstance(x, str)) == "abcd"
    assert out[-1] in ("d", "cd")


def test_producer_errors_reach_the_consumer():
    async def broken():
        yield "a"
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(collect(broken()))


def test_closing_the_consumer_cancels_the_producer():
    cancelled = asyncio.Event()

    async def endless():
        try:
            while True:
                await asyncio.sleep(0.001)
                yield "x"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run():
        stream = coalesce(endless())
        await stream.__anext__()
        await stream.aclose()
        await asyncio.wait_for(cancelled.wait(), 1)

    asyncio.run(run())
