"""The admission arithmetic: a bound on the requests each model has in flight (queued + running)
and per-tenant request and token rates (token buckets). At the bound, a request whose service class
may wait joins the model's fair queue (services/edge/fair_queue.py) instead of being refused. One
instance holds the whole cluster's state, in the LimitBroker deployment (services/edge/limits.py)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import Code
from services.core.service_classes import ServiceClasses
from services.core.timing import CLASS_ACTIVE_S
from services.edge.fair_queue import FairQueue, Waiter


@dataclass
class TokenBucket:
    rate_per_s: float
    capacity: float
    level: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def wait_for(self, amount: float, now: float | None = None) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class Rejected(Exception):
    def __init__(self, message: str, reason: Code, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass
class RateLimit:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


class Admission:
    def __init__(
        self,
        max_in_flight: dict[str, int | None],
        limits: dict[str, RateLimit],
        default_limit: RateLimit,
        classes: ServiceClasses | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight: dict[str, int] = dict.fromkeys(max_in_flight, 0)
        self.limits = limits
        self.default_limit = default_limit
        self.classes = classes or ServiceClasses()
        self.queues: dict[str, FairQueue] = {model: FairQueue() for model in max_in_flight}
        self.class_in_flight: dict[tuple[str, str], int] = defaultdict(int)  # (model, class) ->
        self.last_active: dict[tuple[str, str], float] = {}  # (model, class) -> its last request's arrival
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, tenant: str, kind: str, per_minute: float) -> TokenBucket:
        key = (tenant, kind)
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(rate_per_s=per_minute / 60, capacity=per_minute)
        return self._buckets[key]

    def applies(self, model: str, tenant: str) -> bool:
        """Whether any limit covers this request (else `admit` has nothing to check or count)."""
        limit = self.limits.get(tenant, self.default_limit)
        return self.max_in_flight.get(model) is not None or bool(limit.requests_per_minute or limit.tokens_per_minute)

    def admit(self, model: str, tenant: str, estimated_tokens: int) -> Waiter | None:
        """Raises Rejected; or counts the request in flight (None; release it with `release`); or,
        at the model's bound, queues it (the Waiter: its `on_grant` runs when a slot is its)."""
        checks = self._rate_checks(tenant, estimated_tokens)
        for bucket, amount, code in checks:
            wait = bucket.wait_for(amount)
            if wait > 0:
                raise Rejected(
                    f"rate limit of {code.removeprefix('rate_limited_')} per minute reached for `{tenant}`; "
                    f"retry in {math.ceil(wait)}s",
                    code,
                    wait,
                )
        bound, queue = self.max_in_flight.get(model), self.queues[model]
        class_name, service_class = self.classes.class_of(tenant)
        now = time.monotonic()
        self.last_active[(model, class_name)] = now
        at_once = (
            bound is None
            or self._below_guarantee(model, class_name)
            or (not queue.waiting() and self._lendable(model, class_name, now) > 0)
        )
        waiter = None
        if not at_once:
            if queue.waiting(class_name) >= service_class.max_queued:
                raise Rejected(
                    f"model `{model}` is at capacity ({bound} requests in flight); retry shortly", Code.QUEUE_FULL, 1
                )
            waiter = Waiter(tenant, class_name, service_class.share)
            queue.push(waiter)
        else:
            self._count(model, class_name, +1)
            queue.charge(tenant, service_class.share)
        for bucket, amount, _ in checks:  # counted once admitted or queued: a queued request is one sent
            bucket.take(amount)
        return waiter

    def _rate_checks(self, tenant: str, estimated_tokens: int) -> list[tuple[TokenBucket, float, Code]]:
        limit = self.limits.get(tenant, self.default_limit)
        checks = []
        if limit.requests_per_minute:
            checks.append(
                (self._bucket(tenant, "requests", limit.requests_per_minute), 1.0, Code.RATE_LIMITED_REQUESTS)
            )
        if limit.tokens_per_minute:
            checks.append(
                (
                    self._bucket(tenant, "tokens", limit.tokens_per_minute),
                    float(estimated_tokens),
                    Code.RATE_LIMITED_TOKENS,
                )
            )
        return checks

    def queue_timeout_s(self, model: str, tenant: str) -> float:
        """The longest a request of `tenant` may wait for a slot of `model` (0: it never waits)."""
        service_class = self.classes.class_of(tenant)[1]
        may_wait = self.max_in_flight.get(model) is not None and service_class.max_queued > 0
        return service_class.queue_timeout_s if may_wait else 0.0

    def guaranteed(self, model: str, class_name: str) -> int:
        """Slots of `model` a class always gets, even while others' requests hold the bound: its share
        of `max_in_flight` (so the model holds at most twice its bound). 0 without classes."""
        bound, classes = self.max_in_flight.get(model), self.classes.classes
        if bound is None or class_name not in classes:
            return 0
        return math.floor(bound * classes[class_name].share / sum(c.share for c in classes.values()))

    def _below_guarantee(self, model: str, class_name: str) -> bool:
        return self.class_in_flight[(model, class_name)] < self.guaranteed(model, class_name)

    def _lendable(self, model: str, class_name: str, now: float) -> int:
        """Free slots a request of `class_name` may take: the bound less what is in flight, less the
        unused guarantees of the other classes that sent requests lately (kept for their next ones)."""
        bound = self.max_in_flight[model] or 0
        kept = sum(
            max(0, self.guaranteed(model, other) - self.class_in_flight[(model, other)])
            for other in self.classes.classes
            if other != class_name and now - self.last_active.get((model, other), -math.inf) < CLASS_ACTIVE_S
        )
        return bound - self.in_flight[model] - kept

    def _count(self, model: str, class_name: str, change: int) -> None:
        self.in_flight[model] += change
        self.class_in_flight[(model, class_name)] += change

    def hold(self, model: str, tenant: str) -> None:
        """Count a slot an earlier broker granted (re-declared by its edge after a restart)."""
        self._count(model, self.classes.class_of(tenant)[0], +1)

    def release(self, model: str, tenant: str) -> None:
        """A request's slot is free: waiters of a class below its guarantee go first, then the fairest
        waiter that a lendable slot is free for."""
        self._count(model, self.classes.class_of(tenant)[0], -1)
        if self.max_in_flight.get(model) is None:
            return
        queue, now = self.queues[model], time.monotonic()
        while True:
            waiter = queue.pop(lambda name: self._below_guarantee(model, name)) or queue.pop(
                lambda name: self._lendable(model, name, now) > 0
            )
            if waiter is None:
                return
            self._count(model, waiter.service_class, +1)
            waiter.state = "granted"
            waiter.on_grant()

    def abandon(self, model: str, waiter: Waiter) -> None:
        """A waiter that stopped waiting (its deadline passed, its caller left) before its grant."""
        if waiter.state == "waiting":
            self.queues[model].remove(waiter)
            waiter.state = "abandoned"


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt (~4 characters a token) plus the requested output: what a request may cost. Never
    negative: a bogus max_tokens must not refill the caller's token bucket (vLLM rejects it later)."""
    text = next((body[key] for key in ("prompt", "messages", "input") if key in body), None)
    requested = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    output = requested if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0 else 256
    return len(str(text)) // 4 + output
