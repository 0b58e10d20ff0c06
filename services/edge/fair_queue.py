"""Who gets a model's next in-flight slot when requests wait for one: start-time fair queueing over
tenants, weighted by their service class's share.

Each grant charges its tenant 1/share of virtual time. A waiting tenant's turn starts at the later of
the queue's virtual clock and the end of its last charge, and the earliest start is served next, so
a tenant that has had more than its share waits behind one that has had less, a tenant back from idle
starts level with the clock instead of cashing in credit, and one alone gets every slot. Requests of
one tenant keep their order. Pure bookkeeping: the limit broker owns the waiting and the clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


def _nothing() -> None:
    pass


@dataclass(eq=False)
class Waiter:
    tenant: str
    service_class: str
    share: float
    on_grant: Callable[[], None] = _nothing
    state: Literal["waiting", "granted", "abandoned"] = "waiting"


@dataclass
class FairQueue:
    _clock: float = 0.0
    _finish: dict[str, float] = field(default_factory=dict)  # tenant -> end of its last charge
    _waiting: dict[str, deque[Waiter]] = field(default_factory=dict)  # tenant -> its waiters, in order

    def charge(self, tenant: str, share: float) -> None:
        """A slot granted to `tenant` (waiting or not)."""
        start = self._start(tenant)
        self._finish[tenant] = start + 1 / share
        self._clock = start

    def _start(self, tenant: str) -> float:
        return max(self._clock, self._finish.get(tenant, 0.0))

    def push(self, waiter: Waiter) -> None:
        self._waiting.setdefault(waiter.tenant, deque()).append(waiter)

    def pop(self, allowed: Callable[[str], bool] | None = None) -> Waiter | None:
        """The next waiter to serve (charged) among those whose service class is `allowed`, or None."""
        tenants = [
            tenant for tenant, queue in self._waiting.items() if allowed is None or allowed(queue[0].service_class)
        ]
        if not tenants:
            return None
        tenant = min(tenants, key=self._start)  # ties: the tenant that started waiting first
        queue = self._waiting[tenant]
        waiter = queue.popleft()
        if not queue:
            del self._waiting[tenant]
        self.charge(tenant, waiter.share)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        queue = self._waiting.get(waiter.tenant)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[waiter.tenant]

    def waiting(self, service_class: str | None = None) -> int:
        return sum(
            1
            for queue in self._waiting.values()
            for waiter in queue
            if service_class is None or waiter.service_class == service_class
        )
