"""The admission arithmetic: a bound on the requests each model has in flight (queued + running)
and per-tenant request and token rates (token buckets). One instance holds the whole cluster's
state, in the LimitBroker deployment (services/edge/limits.py)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import Code


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
        self, max_in_flight: dict[str, int | None], limits: dict[str, RateLimit], default_limit: RateLimit
    ) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight: dict[str, int] = dict.fromkeys(max_in_flight, 0)
        self.limits = limits
        self.default_limit = default_limit
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

    def admit(self, model: str, tenant: str, estimated_tokens: int) -> None:
        """Raises Rejected, or counts the request in flight (release it with `release`)."""
        bound = self.max_in_flight.get(model)
        if bound is not None and self.in_flight[model] >= bound:
            raise Rejected(
                f"model `{model}` is at capacity ({bound} requests in flight); retry shortly", Code.QUEUE_FULL, 1
            )
        limit = self.limits.get(tenant, self.default_limit)
        checks = []
        if limit.requests_per_minute:
            checks.append((self._bucket(tenant, "requests", limit.requests_per_minute), 1, Code.RATE_LIMITED_REQUESTS))
        if limit.tokens_per_minute:
            checks.append(
                (self._bucket(tenant, "tokens", limit.tokens_per_minute), estimated_tokens, Code.RATE_LIMITED_TOKENS)
            )
        for bucket, amount, code in checks:
            wait = bucket.wait_for(amount)
            if wait > 0:
                raise Rejected(
                    f"rate limit of {code.removeprefix('rate_limited_')} per minute reached for `{tenant}`; "
                    f"retry in {math.ceil(wait)}s",
                    code,
                    wait,
                )
        for bucket, amount, _ in checks:
            bucket.take(amount)
        self.in_flight[model] += 1

    def release(self, model: str) -> None:
        self.in_flight[model] -= 1


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt (~4 characters a token) plus the requested output: what a request may cost. Never
    negative: a bogus max_tokens must not refill the caller's token bucket (vLLM rejects it later)."""
    text = body.get("prompt") if "prompt" in body else body.get("messages")
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    output = requested if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0 else 256
    return len(str(text)) // 4 + output
