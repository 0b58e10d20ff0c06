"""Admission limits that hold across the cluster: per-model in-flight bounds and per-tenant request
and token rates, enforced by one `LimitBroker` deployment for every replica that serves HTTP (each
engine replica in direct mode, each PlatformIngress replica), so that two replicas never
admit twice the budget.

An edge asks the broker only for requests that some limit applies to (a model with
`max_in_flight`, a tenant with a rate): a catalog without limits pays nothing and runs no broker.
Each admission is a ticket that the edge releases when the request ends; a ticket whose edge died
expires after the request deadline, so slots cannot leak.

A broker restart loses no request and counts no slot twice. The edges hold the ledger's copy that
survives: each keeps the tickets it holds and the incarnation of the broker that last answered it.
A new broker (a new incarnation) admits nothing for RECOVERY_S while the edges re-declare what they
hold (`adopt`, idempotent per ticket): an edge learns of the new broker from its next answer, or from
the check it makes every SYNC_S while it holds tickets and has heard nothing. A request whose call
the dying broker dropped asks again; a release sent to it is void, as the count died with it. What
is not rebuilt: the per-tenant rate windows, which start full again. Failure mode, by choice: when
no broker answers within `BROKER_TIMEOUT_S` (longer than a restart), limited requests fail closed
with 503 `limiter_unavailable` and Retry-After; unlimited ones never ask.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from services.core.catalog import Catalog
from services.core.errors import Code
from services.core.serve_context import background_task, outside_request
from services.core.timing import (
    BROKER_RETRY_S,
    BROKER_TIMEOUT_S,
    RECOVERY_S,
    RELEASE_BATCH_S,
    SYNC_S,
    TICKET_GRACE_S,
)
from services.edge.admission import Admission, RateLimit, Rejected

logger = logging.getLogger("slmserve.limits")


@dataclass(frozen=True, slots=True)
class Admitted:
    ticket: str
    queued_s: float = 0.0  # how long it waited for a slot (its service class's fair queue)
    broker: str = ""  # the incarnation that issued it


@dataclass(frozen=True, slots=True)
class HeldTicket:
    """A ticket an edge holds, as it re-declares it to a broker that restarted."""

    ticket: str
    model: str
    tenant: str
    broker: str  # the incarnation that counts it


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

    def __init__(self, catalog: dict[str, Any], recovery_s: float = RECOVERY_S) -> None:
        parsed = Catalog.model_validate(catalog)
        self.admission = admission_for(parsed)
        # Ordered by start (the head node's clock): an edge tells a newer broker from an older one.
        self.incarnation = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.recovered_at = time.monotonic() + recovery_s  # until then the edges re-declare their tickets
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
        if arrived < self.recovered_at:  # the edges' tickets of the broker before are not all counted yet
            await asyncio.sleep(self.recovered_at - arrived)
        self._expire(time.monotonic())
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
        return Admitted(ticket, now - arrived, self.incarnation)

    async def adopt(self, held: list[HeldTicket]) -> str:
        """Count the tickets an edge holds from an earlier broker (once each); this incarnation."""
        expires = time.monotonic() + self.ticket_ttl_s
        for entry in held:
            if entry.ticket not in self.tickets:
                self.tickets[entry.ticket] = (entry.model, entry.tenant, expires)
                self.admission.hold(entry.model, entry.tenant)
        return self.incarnation

    async def identity(self) -> str:
        return self.incarnation

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
        self.broker: Any = broker  # a Serve handle to the LimitBroker, or None
        self.rules = admission_for(catalog)  # consulted only for which limits apply; the counts are the broker's
        self._ended: list[str] = []  # tickets of ended requests, sent together (`release`)
        self._batching = False  # a release went out less than RELEASE_BATCH_S ago
        self.held: dict[str, HeldTicket] = {}  # tickets of requests in progress here
        self.broker_seen = ""  # the newest broker incarnation that answered
        self._heard_at = 0.0
        self._sync: asyncio.Task[None] | None = None
        self._redeclaring: asyncio.Task[None] | None = None

    def applies(self, model: str, tenant: str) -> bool:
        return self.broker is not None and self.rules.applies(model, tenant)

    async def admit(self, model: str, tenant: str, estimated_tokens: int) -> Admitted | None:
        """A ticket to release, or None where no limit applies. Raises Rejected or LimiterUnavailable."""
        if self.broker is None or not self.rules.applies(model, tenant):
            return None
        # It may wait in a fair queue, or for a broker that restarts.
        deadline = time.monotonic() + BROKER_TIMEOUT_S + self.rules.queue_timeout_s(model, tenant)
        while True:
            try:
                decision = await self._ask(model, tenant, estimated_tokens, deadline)
                break
            except LimiterUnavailable:
                raise
            except Exception as error:  # the broker died with the call: Serve starts another; ask it
                if time.monotonic() + BROKER_RETRY_S >= deadline:
                    raise LimiterUnavailable(str(error)) from error
                logger.warning("limit broker lost a call (%r); asking again", error)
                await asyncio.sleep(BROKER_RETRY_S)
        if isinstance(decision, Refused):
            raise Rejected(decision.message, decision.reason, decision.retry_after_s)
        self._hold(decision, model, tenant)
        return decision

    async def _ask(self, model: str, tenant: str, estimated_tokens: int, deadline: float) -> Admitted | Refused:
        # Outside the request, so that Serve does not cancel the call with a departing client's request
        # (the broker may have counted the ticket already), and shielded: an edge that gives up on the
        # call (its client left, or the broker was slow) may still be granted a ticket later; it is
        # released the moment it lands.
        call = asyncio.ensure_future(outside_request(self.broker.admit.remote, model, tenant, estimated_tokens))
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                decision: Admitted | Refused = await asyncio.shield(call)
                return decision
        except asyncio.CancelledError:
            call.add_done_callback(self._release_late_ticket)
            raise
        except TimeoutError as error:  # a broker that does not answer: fail closed
            call.add_done_callback(self._release_late_ticket)
            logger.warning("limit broker unreachable: %r", error)
            raise LimiterUnavailable("the limit broker did not answer in time") from error

    # ---- the edge's copy of its tickets, for a broker that restarts ----------------------------

    def _hold(self, admitted: Admitted, model: str, tenant: str) -> None:
        self.held[admitted.ticket] = HeldTicket(admitted.ticket, model, tenant, admitted.broker)
        self._heard(admitted.broker)
        if self._sync is None:
            self._sync = background_task(self._sync_forever())

    def _heard(self, incarnation: str) -> None:
        """An answer from broker `incarnation`: a newer one than before gets the tickets it lacks."""
        self._heard_at = time.monotonic()
        if incarnation > self.broker_seen:
            self.broker_seen = incarnation
        if self._redeclaring is None and any(entry.broker != self.broker_seen for entry in self.held.values()):
            self._redeclaring = background_task(self._redeclare())

    async def _redeclare(self) -> None:
        try:
            while stale := [entry for entry in self.held.values() if entry.broker != self.broker_seen]:
                adopted_by: str = await outside_request(self.broker.adopt.remote, stale)
                for entry in stale:
                    if entry.ticket in self.held:
                        self.held[entry.ticket] = replace(entry, broker=adopted_by)
                if adopted_by > self.broker_seen:
                    self.broker_seen = adopted_by
                self._heard_at = time.monotonic()
        except Exception as error:  # the next answer or check tries again
            logger.warning("could not re-declare tickets to the limit broker: %r", error)
        finally:
            self._redeclaring = None

    async def _sync_forever(self) -> None:
        """While this edge holds tickets and has not heard from the broker in SYNC_S, ask who it is."""
        while True:
            await asyncio.sleep(SYNC_S)
            if not self.held or time.monotonic() - self._heard_at < SYNC_S:
                continue
            try:
                async with asyncio.timeout(BROKER_TIMEOUT_S):
                    self._heard(await outside_request(self.broker.identity.remote))
            except Exception as error:
                logger.warning("limit broker check failed: %r", error)

    def release(self, admitted: Admitted | None) -> None:
        """Frees the request's slot at the broker: at once when no release went out in the last
        RELEASE_BATCH_S, else with the others ended by the end of it (one call for them all)."""
        if admitted is None or self.broker is None:
            return
        self.held.pop(admitted.ticket, None)
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
