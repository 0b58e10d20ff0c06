"""Cluster-wide limits (services/edge/limits.py) on their own: several edges share one broker, tickets
expire, an unreachable broker fails closed. The live two-replica case is in tests/live/two_replicas/test_routing.py.
The handle here is a stand-in that calls the real broker in this process (Ray is not needed to
show the arithmetic)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.core.catalog import parse_catalog
from services.core.timing import RELEASE_BATCH_S
from services.edge.admission import Rejected
from services.edge.limits import LimitBroker, LimiterUnavailable, SharedLimits, has_limits

CATALOG = {
    "edge": {"rate_limits": {"tenants": {"small": {"requests_per_minute": 3}, "vip": {}}}},
    "models": [{"name": "bounded", "source": "org/a", "max_in_flight": 4}, {"name": "free", "source": "org/b"}],
}


class _Method:
    def __init__(self, function: Any, calls: list[str], fail: bool, delay_s: float = 0.0) -> None:
        self.function, self.calls, self.fail, self.delay_s = function, calls, fail, delay_s

    def remote(self, *args: Any) -> Any:
        self.calls.append(self.function.__name__)

        async def answer() -> Any:
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise ConnectionError("broker gone")
            return await self.function(*args)

        if self.function.__name__ != "admit":
            return asyncio.ensure_future(self.function(*args))  # runs on the broker's loop, not awaited
        granted = asyncio.ensure_future(answer())  # runs in the broker whether or not the caller waits
        return _Response(granted)


class _Response:
    """Awaiting it and giving up (cancelled, timed out) does not undo the broker's work, as with Serve."""

    def __init__(self, granted: asyncio.Future[Any]) -> None:
        self.granted = granted

    def __await__(self) -> Any:
        return asyncio.shield(self.granted).__await__()


class Handle:
    """Like a Serve handle to the broker: `.admit.remote(...)` is awaited, `.release_many.remote(...)` is not.
    `broker` may be replaced, as Serve replaces a broker that died."""

    def __init__(self, broker: LimitBroker, fail: bool = False, admit_delay_s: float = 0.0) -> None:
        self.calls: list[str] = []
        self.broker, self.fail, self.admit_delay_s = broker, fail, admit_delay_s

    def __getattr__(self, name: str) -> _Method:
        delay_s = self.admit_delay_s if name == "admit" else 0.0
        return _Method(getattr(self.broker, name), self.calls, self.fail, delay_s)


def broker_now() -> LimitBroker:
    """A broker that admits at once (the first one: no earlier broker's tickets to wait for)."""
    return LimitBroker(CATALOG, recovery_s=0)


def edges(count: int) -> tuple[LimitBroker, list[SharedLimits], Handle]:
    broker = broker_now()
    handle = Handle(broker)
    return broker, [SharedLimits(parse_catalog(CATALOG), handle) for _ in range(count)], handle


def test_two_edges_share_one_in_flight_bound():
    async def scenario() -> None:
        broker, (left, right), _ = edges(2)
        tickets = [await edge.admit("bounded", "anyone", 10) for edge in (left, right, left, right)]
        for edge in (left, right):  # per-edge bounds would admit 4 each
            with pytest.raises(Rejected) as raised:
                await edge.admit("bounded", "anyone", 10)
            assert raised.value.reason == "queue_full"
        left.release(tickets[0])
        await asyncio.sleep(0)  # the release reaches the broker
        assert await right.admit("bounded", "anyone", 10)
        assert broker.in_flight()["bounded"] == 4

    asyncio.run(scenario())


def test_a_busy_edge_releases_the_tickets_its_requests_end_with_in_one_call_per_batch():
    async def scenario() -> None:
        broker, (edge,), handle = edges(1)
        tickets = [await edge.admit("bounded", "anyone", 10) for _ in range(4)]
        edge.release(tickets[0])  # the first goes out at once
        await asyncio.sleep(0)
        assert handle.calls.count("release_many") == 1 and broker.in_flight()["bounded"] == 3
        for ticket in tickets[1:]:  # the next ones within RELEASE_BATCH_S wait for the batch
            edge.release(ticket)
        await asyncio.sleep(0)
        assert broker.in_flight()["bounded"] == 3
        await asyncio.sleep(RELEASE_BATCH_S * 2)
        assert handle.calls.count("release_many") == 2 and broker.in_flight()["bounded"] == 0

    asyncio.run(scenario())


def test_two_edges_share_one_tenant_rate():
    async def scenario() -> None:
        _, (left, right), _ = edges(2)
        admitted = 0
        for edge in (left, right, left, right, left, right):
            try:
                left.release(await edge.admit("free", "small", 1))
                admitted += 1
            except Rejected as rejected:
                assert rejected.reason == "rate_limited_requests" and rejected.retry_after_s >= 1
        assert admitted == 3  # 3 a minute in all, not 3 per edge

    asyncio.run(scenario())


def test_requests_no_limit_applies_to_never_ask_the_broker():
    async def scenario() -> None:
        _, (edge,), handle = edges(1)
        assert await edge.admit("free", "vip", 10) is None and await edge.admit("free", "anyone", 10) is None
        edge.release(None)
        assert handle.calls == []
        assert not has_limits(parse_catalog({"models": [{"name": "m", "source": "org/m"}]}))

    asyncio.run(scenario())


def test_an_unreachable_broker_fails_closed_for_limited_requests_only(monkeypatch):
    monkeypatch.setattr("services.edge.limits.BROKER_TIMEOUT_S", 0.3)

    async def scenario() -> None:
        edge = SharedLimits(parse_catalog(CATALOG), Handle(broker_now(), fail=True))
        with pytest.raises(LimiterUnavailable):
            await edge.admit("bounded", "anyone", 10)
        assert await edge.admit("free", "anyone", 10) is None  # no limit applies: served as usual

    asyncio.run(scenario())


def test_a_ticket_whose_edge_died_expires_and_frees_its_slot():
    async def scenario() -> None:
        broker = broker_now()
        for _ in range(4):
            await broker.admit("bounded", "anyone", 1)
        assert (await broker.admit("bounded", "anyone", 1)).reason == "queue_full"
        broker.ticket_ttl_s = 0  # as if the request deadline had long passed
        broker.tickets = {ticket: (model, tenant, 0.0) for ticket, (model, tenant, _) in broker.tickets.items()}
        assert (await broker.admit("bounded", "anyone", 1)).ticket
        assert broker.in_flight()["bounded"] == 1
        await broker.release("unknown-ticket")  # a release from before a broker restart: ignored
        assert broker.in_flight()["bounded"] == 1

    asyncio.run(scenario())


def test_tickets_expire_oldest_first_and_only_once_past_their_time():
    """Tickets live equally long, so the oldest expire first: an admission looks at those only
    (loadtests/scale_costs.py measures why: a scan of every ticket per admission was the broker's limit)."""

    async def scenario() -> None:
        broker = broker_now()
        broker.ticket_ttl_s = 0.05
        old = [await broker.admit("bounded", "anyone", 1) for _ in range(2)]
        await asyncio.sleep(0.1)
        broker.ticket_ttl_s = 60
        new = await broker.admit("bounded", "anyone", 1)  # expires the two old ones first
        assert broker.in_flight()["bounded"] == 1 and list(broker.tickets) == [new.ticket]
        await broker.release(old[0].ticket)  # its edge comes back late: already expired, nothing to free
        assert broker.in_flight()["bounded"] == 1
        await broker.release(new.ticket)
        assert broker.in_flight()["bounded"] == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("gives_up", ["cancelled", "timed_out"])
def test_a_ticket_granted_after_its_edge_gave_up_is_released_when_it_lands(gives_up, monkeypatch):
    """The client left (Serve cancels the request) or the broker was slow: the broker may still grant
    the ticket after the edge stopped waiting, and that slot must come back, not wait for expiry."""

    async def scenario() -> None:
        broker = broker_now()
        edge = SharedLimits(parse_catalog(CATALOG), Handle(broker, admit_delay_s=0.2))
        if gives_up == "timed_out":
            monkeypatch.setattr("services.edge.limits.BROKER_TIMEOUT_S", 0.05)
            with pytest.raises(LimiterUnavailable):
                await edge.admit("bounded", "anyone", 10)
        else:
            waiting = asyncio.ensure_future(edge.admit("bounded", "anyone", 10))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert broker.in_flight().get("bounded", 0) == 0  # not granted yet
        await asyncio.sleep(0.3)
        assert broker.tickets == {} and broker.in_flight().get("bounded", 0) == 0

    asyncio.run(scenario())


def test_a_broker_restart_counts_every_held_slot_once_and_loses_no_request(monkeypatch):
    """Serve replaces a broker that died: the new one starts empty, so the edges re-declare the tickets
    they hold before it admits anything, and a request whose call died with the old one asks again."""
    monkeypatch.setattr("services.edge.limits.SYNC_S", 0.05)

    async def scenario() -> None:
        old, (busy, quiet), handle = edges(2)
        held = [await busy.admit("bounded", "anyone", 1), await busy.admit("bounded", "anyone", 1)]
        held.append(await quiet.admit("bounded", "anyone", 1))  # quiet admits nothing more: it must sync
        assert old.in_flight()["bounded"] == 3
        handle.fail = True  # the broker dies with this call in it
        asking = asyncio.ensure_future(busy.admit("bounded", "anyone", 1))
        await asyncio.sleep(0.1)
        new = LimitBroker(CATALOG, recovery_s=0.4)
        handle.broker, handle.fail = new, False  # Serve's replacement comes up
        fourth = await asking
        assert fourth.broker == new.incarnation and fourth.queued_s >= 0.2  # admitted once recovered
        assert new.in_flight()["bounded"] == 4  # three re-declared, each once, and the new one
        with pytest.raises(Rejected):  # the bound holds across the restart
            await quiet.admit("bounded", "anyone", 1)
        assert await new.adopt([busy.held[held[0].ticket]]) == new.incarnation  # declared again: no change
        assert new.in_flight()["bounded"] == 4
        busy.release(held[0])  # issued by the old broker, released to the new one: counted out once
        quiet.release(held[2])
        await asyncio.sleep(RELEASE_BATCH_S * 3)
        assert new.in_flight()["bounded"] == 2
        busy.release(held[1])
        busy.release(fourth)
        await asyncio.sleep(RELEASE_BATCH_S * 3)
        assert new.in_flight()["bounded"] == 0 and new.tickets == {}

    asyncio.run(scenario())


def test_a_release_sent_to_the_broker_that_died_is_not_declared_again(monkeypatch):
    monkeypatch.setattr("services.edge.limits.SYNC_S", 0.05)

    async def scenario() -> None:
        _, (edge,), handle = edges(1)
        ended, going = await edge.admit("bounded", "anyone", 1), await edge.admit("bounded", "anyone", 1)
        edge.release(ended)  # reached the old broker, whose count dies with it
        new = LimitBroker(CATALOG, recovery_s=0.3)
        handle.broker = new
        await asyncio.sleep(0.3)  # the edge's check finds the new broker and re-declares
        assert new.in_flight()["bounded"] == 1 and list(new.tickets) == [going.ticket]

    asyncio.run(scenario())
