"""Admission limits that hold across the cluster: per-model in-flight bounds and per-tenant request
and token rates, enforced by one `LimitBroker` deployment for every replica that serves HTTP (each
engine replica in direct mode, each PlatformIngress replica), so that two replicas never
admit twice the budget.

An edge asks the broker only for requests that some limit applies to (a model with
`max_in_flight`, a tenant with a rate): a catalog without limits pays nothing and runs no broker.
Each admission is a ticket that the edge releases when the request ends; a ticket whose edge died
expires after the request deadline, so slots cannot leak. Failure mode, by choice: when the broker
cannot be reached within `BROKER_TIMEOUT_S`, limited requests fail closed with 503
`limiter_unavailable` and Retry-After (unlimited ones are unaffected); Serve restarts the broker,
which starts with empty counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from services.core.catalog import Catalog
from services.core.errors import Code
from services.core.serve_context import outside_request
from services.core.timing import BROKER_TIMEOUT_S, RELEASE_BATCH_S, TICKET_GRACE_S
from services.edge.admission import Admission, RateLimit, Rejected

logger = logging.getLogger("slmserve.limits")


@dataclass(frozen=True, slots=True)
class Admitted:
    ticket: str
    queued_s: float = 0.0  # how long it waited for a slot (its service class's fair queue)


@dataclass(frozen=True, slots=True)
class Refused:
    message: str
    reason: Code
    retry_after_s: float


def admission_for(catalog: Catalog) -> Admission:
    limits = catalog.edge.rate_limits
    return Admission(
        {entry.name: entry.max_in_flight for entry in catalog.models},
        {tenant: RateLimit(**limit.model_dump()) for tenant, limit in limits.tenants.items()},
        RateLimit(**limits.default.model_dump()),
        catalog.edge.service_classes,
    )


def has_limits(catalog: Catalog) -> bool:
    limits = catalog.edge.rate_limits
    rates = [limits.default, *limits.tenants.values()]
    return any(entry.max_in_flight for entry in catalog.models) or any(
        rate.requests_per_minute or rate.tokens_per_minute for rate in rates
    )


class LimitBroker:
    """One replica per application (services/app.py): the cluster's admission state."""

    def __init__(self, catalog: dict[str, Any]) -> None:
        parsed = Catalog.model_validate(catalog)
        self.admission = admission_for(parsed)
        self.ticket_ttl_s = parsed.edge.request_timeout_s + TICKET_GRACE_S
        # ticket -> (model, tenant, expires at), in the order issued: every ticket lives as long, so that is
        # also the order they expire in, and expiring looks only at the oldest (a scan of every ticket
        # per admission held the broker to 886 admissions/s with 50,000 requests in flight).
        self.tickets: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self.tickets:
            ticket, (model, tenant, expires) = next(iter(self.tickets.items()))
            if expires >= now:
                return
            del self.tickets[ticket]
            logger.warning("admission ticket for %s expired unreleased (its edge left?)", model)
            self.admission.release(model, tenant)

    async def admit(self, model: str, tenant: str, estimated_tokens: int) -> Admitted | Refused:
        """A ticket, at once or after a wait in the model's fair queue; or the reason for a 429."""
        arrived = time.monotonic()
        self._expire(arrived)
        try:
            waiter = self.admission.admit(model, tenant, estimated_tokens)
        except Rejected as rejected:
            return Refused(str(rejected), rejected.reason, rejected.retry_after_s)
        if waiter is not None:
            granted = asyncio.Event()
            waiter.on_grant = granted.set
            timeout_s = self.admission.queue_timeout_s(model, tenant)
            try:
                async with asyncio.timeout(timeout_s):
                    await granted.wait()
            except TimeoutError:
                if waiter.state != "granted":
                    self.admission.abandon(model, waiter)
                    return Refused(
                        f"model `{model}` had no free slot within {timeout_s:g}s; retry shortly", Code.QUEUE_TIMEOUT, 1
                    )
            except asyncio.CancelledError:  # the caller is gone: its place, or its slot, goes to the next
                self.admission.abandon(model, waiter)
                if waiter.state == "granted":
                    self.admission.release(model, tenant)
                raise
        now = time.monotonic()
        ticket = uuid.uuid4().hex
        self.tickets[ticket] = (model, tenant, now + self.ticket_ttl_s)
        return Admitted(ticket, now - arrived)

    async def release(self, ticket: str) -> None:  # async: a grant resolves a waiter on this loop
        entry = self.tickets.pop(ticket, None)
        if entry is not None:  # unknown: expired already, or issued before a broker restart
            self.admission.release(*entry[:2])

    async def release_many(self, tickets: list[str]) -> None:
        """The tickets an edge's requests ended with over the last RELEASE_BATCH_S."""
        for ticket in tickets:
            await self.release(ticket)

    def in_flight(self) -> dict[str, int]:
        return dict(self.admission.in_flight)


class LimiterUnavailable(Exception):
    pass


class SharedLimits:
    """An edge's view of the broker (None when the catalog has no limits)."""

    def __init__(self, catalog: Catalog, broker: Any | None) -> None:
        self.broker = broker
        self.rules = admission_for(catalog)  # consulted only for which limits apply; the counts are the broker's
        self._ended: list[str] = []  # tickets of ended requests, sent together (`release`)
        self._batching = False  # a release went out less than RELEASE_BATCH_S ago

    def applies(self, model: str, tenant: str) -> bool:
        return self.broker is not None and self.rules.applies(model, tenant)

    async def admit(self, model: str, tenant: str, estimated_tokens: int) -> Admitted | None:
        """A ticket to release, or None where no limit applies. Raises Rejected or LimiterUnavailable."""
        if self.broker is None or not self.rules.applies(model, tenant):
            return None
        patience_s = BROKER_TIMEOUT_S + self.rules.queue_timeout_s(model, tenant)  # it may wait in a fair queue
        # Outside the request, so that Serve does not cancel the call with a departing client's request
        # (the broker may have counted the ticket already), and shielded: an edge that gives up on the
        # call (its client left, or the broker was slow) may still be granted a ticket later; it is
        # released the moment it lands.
        call = asyncio.ensure_future(outside_request(self.broker.admit.remote, model, tenant, estimated_tokens))
        try:
            async with asyncio.timeout(patience_s):
                decision = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(self._release_late_ticket)
            raise
        except Exception as error:  # timeout, a dead or restarting broker: fail closed
            call.add_done_callback(self._release_late_ticket)
            logger.warning("limit broker unreachable: %r", error)
            raise LimiterUnavailable(str(error)) from error
        if isinstance(decision, Refused):
            raise Rejected(decision.message, decision.reason, decision.retry_after_s)
        admitted: Admitted = decision
        return admitted

    def release(self, admitted: Admitted | None) -> None:
        """Frees the request's slot at the broker: at once when no release went out in the last
        RELEASE_BATCH_S, else with the others ended by the end of it (one call for them all)."""
        if admitted is None or self.broker is None:
            return
        self._ended.append(admitted.ticket)
        if not self._batching:
            self._send_releases()

    def _send_releases(self) -> None:
        if not self._ended or self.broker is None:
            self._batching = False
            return
        tickets, self._ended = self._ended, []
        # Not awaited (an end of request never waits on it), and outside any request: the release of a
        # cancelled request's ticket must not be cancelled with it.
        outside_request(self.broker.release_many.remote, tickets)
        self._batching = True
        asyncio.get_running_loop().call_later(RELEASE_BATCH_S, self._send_releases)

    def _release_late_ticket(self, call: asyncio.Future[Admitted | Refused]) -> None:
        if not call.cancelled() and call.exception() is None:
            decision = call.result()
            if isinstance(decision, Admitted):
                self.release(decision)
