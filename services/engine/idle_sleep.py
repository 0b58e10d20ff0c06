"""An engine that falls asleep when idle and wakes for the next request (the catalog's
`idle.sleep_after_s`; GPU engines only: vLLM's sleep mode needs CUDA).

Asleep (vLLM's sleep level 1), the engine's weights wait in host memory and its KV cache is freed,
so the GPU's memory is free for others; waking takes a fraction of a second where a replica's start
takes a minute or more. Every request enters through `serving()`: under one lock it wakes the engine
if needed (concurrent requests share one wake) and counts itself in, so the idle loop, which sleeps
the engine under the same lock, never does so with a request inside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from services.engine.card_memory import CardSeat

logger = logging.getLogger("slmserve.engine")


class IdleSleep:
    def __init__(
        self,
        sleep: Callable[[], Awaitable[None]],
        wake: Callable[[], Awaitable[None]],
        after_s: float,
        check_period_s: float = 1.0,
        card: CardSeat | None = None,
    ) -> None:
        self._sleep, self._wake = sleep, wake
        self.card = card  # a GPU shared with other sleepers: room is claimed before a wake
        self.after_s = after_s
        self.check_period_s = min(check_period_s, after_s / 2)
        self.asleep = False
        self.active = 0  # requests inside `serving()`
        self._quiet = asyncio.Event()  # set while no request is inside
        self._quiet.set()
        self.last_used = time.monotonic()
        self.wake_seconds: list[float] = []  # since the last `drain_wakes()`
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        async with self._lock:
            if self.asleep:
                started = time.perf_counter()
                if self.card is not None:
                    await self.card.claim()
                try:
                    await self._wake()
                except BaseException:
                    if self.card is not None:  # still asleep: the room claimed goes back to the card
                        await self.card.slept()
                    raise
                self.asleep = False
                self.wake_seconds.append(time.perf_counter() - started)
                logger.info("engine woke in %.3fs", self.wake_seconds[-1])
            self.active += 1
            self._quiet.clear()
        if self.card is not None:
            self.card.touch()
        try:
            yield
        finally:
            self.active -= 1
            self.last_used = time.monotonic()
            if not self.active:
                self._quiet.set()

    def drain_wakes(self) -> list[float]:
        wakes, self.wake_seconds = self.wake_seconds, []
        return wakes

    def _idle(self) -> bool:
        return not self.asleep and not self.active and time.monotonic() - self.last_used >= self.after_s

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_period_s)
            if self._idle():
                await self._fall_asleep(self._idle, "idle")

    async def obey_card_forever(self, card: CardSeat) -> None:
        """Falls asleep whenever the card needs room for another engine, once this one's requests
        have finished (it never cuts one)."""
        while True:
            await card.sleep_asked()
            settled = False
            while not settled:  # a request that slips in before the lock is served first, then we sleep
                await self._quiet.wait()
                settled = await self._fall_asleep(lambda: not self.active, "asked by the card")

    async def _fall_asleep(self, still_wanted: Callable[[], bool], why: str) -> bool:
        """Sleeps if `still_wanted()` holds under the lock; False if a request came in first."""
        async with self._lock:
            if self.asleep:
                return True
            if not still_wanted():  # a request came in while the lock was taken
                return False
            started = time.perf_counter()
            try:
                await self._sleep()
            except Exception:  # the engine stays awake and serves; try again after the next idle spell
                logger.warning("the engine could not fall asleep", exc_info=True)
                self.last_used = time.monotonic()
                return True
            self.asleep = True
            if self.card is not None:
                await self.card.slept()
            logger.info("engine asleep (%s; %.3fs to fall asleep)", why, time.perf_counter() - started)
            return True
