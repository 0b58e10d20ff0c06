"""Engines that share one GPU and sleep when idle take turns on its memory (issue 29 item 3).

Ray packs replicas with fractional `num_gpus` onto one card. Engines with `idle.sleep_after_s` may
ask for more of the card's memory (`gpu_memory_utilization`) than their share, so long as not all
of them are awake at once: before one wakes (or starts), the card's least recently used awake
engines fall asleep until the awake ones' shares fit. One `CardMemory` actor per card keeps the
ledger; each engine holds a `CardSeat`, through which it claims room, says it slept, and hears when
it should sleep (a long poll, so no engine needs a handle to another).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from services.core.timing import CARD_CLAIM_TIMEOUT_S, CARD_TOUCH_PERIOD_S

logger = logging.getLogger("slmserve.engine")
CAPACITY = 1.0  # the whole card, in gpu_memory_utilization's unit


class CardFull(RuntimeError):
    """No room for an engine to wake: the others did not fall asleep in time, or it cannot fit at all."""


@dataclass
class Tenant:
    share: float  # the engine's gpu_memory_utilization: what it holds awake
    awake: bool = False
    last_used: float = 0.0


class CardLedger:
    """Who is awake on one card and since when each was last used; which engines must sleep so
    that another fits. Plain data: `CardMemory` adds the waiting."""

    def __init__(self, capacity: float = CAPACITY) -> None:
        self.capacity = capacity
        self.tenants: dict[str, Tenant] = {}

    def seat(self, engine: str, share: float) -> None:
        tenant = self.tenants.setdefault(engine, Tenant(share))
        tenant.share = share

    def leave(self, engine: str) -> None:
        self.tenants.pop(engine, None)

    def touch(self, engine: str, at: float) -> None:
        if engine in self.tenants:
            self.tenants[engine].last_used = at

    def mark(self, engine: str, awake: bool, at: float) -> None:
        tenant = self.tenants[engine]
        tenant.awake = awake
        if awake:
            tenant.last_used = at

    def to_sleep_for(self, engine: str) -> list[str]:
        """The awake engines, least recently used first, that must sleep for `engine` to be awake."""
        wanted = self.tenants[engine]
        if wanted.share > self.capacity + 1e-9:
            raise CardFull(f"{engine} asks for {wanted.share:g} of a card, more than the card")
        others = sorted(
            (name for name, tenant in self.tenants.items() if tenant.awake and name != engine),
            key=lambda name: self.tenants[name].last_used,
        )
        held = sum(self.tenants[name].share for name in others)
        chosen = []
        for name in others:
            if held + wanted.share <= self.capacity + 1e-9:
                break
            chosen.append(name)
            held -= self.tenants[name].share
        return chosen


class CardMemory:
    """The ledger of one card, as an async Ray actor (`card_seat` starts it). Claims run one at a
    time, so two engines waking at once never count the same free memory."""

    def __init__(self) -> None:
        self.ledger = CardLedger()
        self._claims = asyncio.Lock()
        self._asked: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()

    async def claim(self, engine: str, share: float, timeout_s: float) -> list[str]:
        """Room for `engine` awake: asks the least recently used awake engines to sleep and waits
        until they have. Returns those it put to sleep; raises CardFull after `timeout_s`."""
        async with self._claims:
            self.ledger.seat(engine, share)
            self._asked.setdefault(engine, asyncio.Event())
            victims = self.ledger.to_sleep_for(engine)
            for victim in victims:
                self._asked[victim].set()
            try:
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait_for(lambda: not self._awake(victims)), timeout_s)
            except TimeoutError:
                stuck = self._awake(victims)
                raise CardFull(f"{', '.join(stuck)} did not fall asleep within {timeout_s:g}s") from None
            self.ledger.mark(engine, True, time.monotonic())
            return victims

    def _awake(self, engines: list[str]) -> list[str]:
        """Those of `engines` still awake (one that left the card, its replica stopped, is not)."""
        return [name for name in engines if name in self.ledger.tenants and self.ledger.tenants[name].awake]

    async def slept(self, engine: str) -> None:
        if engine in self.ledger.tenants:
            self.ledger.mark(engine, False, time.monotonic())
        async with self._changed:
            self._changed.notify_all()

    async def sleep_asked(self, engine: str) -> None:
        """Returns when a claim needs `engine` to sleep (the engine's long poll)."""
        event = self._asked.setdefault(engine, asyncio.Event())
        await event.wait()
        event.clear()

    def touch(self, engine: str) -> None:
        self.ledger.touch(engine, time.monotonic())

    async def leave(self, engine: str) -> None:
        self.ledger.leave(engine)
        self._asked.pop(engine, None)
        async with self._changed:  # a claim waiting for it to sleep has its room now
            self._changed.notify_all()


class CardSeat:
    """One engine's place on its card: claim before waking, say when asleep, obey sleep requests."""

    def __init__(self, actor: Any, engine: str, share: float) -> None:
        self.actor, self.engine, self.share = actor, engine, share
        self._touched = 0.0

    async def claim(self, timeout_s: float = CARD_CLAIM_TIMEOUT_S) -> None:
        try:
            victims = await self.actor.claim.remote(self.engine, self.share, timeout_s)
        except Exception as error:  # CardFull inside Ray's task error, or the ledger's actor lost
            raise CardFull(str(error).strip().splitlines()[-1]) from error
        if victims:
            logger.info("%s: put %s to sleep to fit on the card", self.engine, ", ".join(victims))

    async def slept(self) -> None:
        await self.actor.slept.remote(self.engine)

    def touch(self) -> None:
        """The card's LRU order, sent at most once per CARD_TOUCH_PERIOD_S (fire and forget)."""
        now = time.monotonic()
        if now - self._touched >= CARD_TOUCH_PERIOD_S:
            self._touched = now
            self.actor.touch.remote(self.engine)

    async def sleep_asked(self) -> None:
        await self.actor.sleep_asked.remote(self.engine)

    def leave(self) -> None:
        self.actor.leave.remote(self.engine)


def card_seat(engine: str, share: float) -> CardSeat:
    """This replica's seat on the GPU it was given: the card's CardMemory actor (one per node and
    GPU, started by whichever engine comes first) found by name."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = ray.get_runtime_context()
    node = context.get_node_id()
    gpu = ",".join(context.get_accelerator_ids().get("GPU", [])) or "0"
    actor = (
        ray.remote(CardMemory)
        .options(
            name=f"slmserve-card-{node}-{gpu}",
            namespace="slmserve",
            get_if_exists=True,
            lifetime="detached",  # outlives the engine that started it: the others still share the card
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote()
    )
    return CardSeat(actor, engine, share)
