"""How a ReplicaPicker tells its sends that reached an engine replica from those still on their way.

The picker names itself in a header that HAProxy adds to each request it places (`request_headers`
in the picker's answer; Ray's HAProxy removes client-sent headers of that prefix). Each engine replica
counts the requests it received per picker and reports the counts with its load, and the policy
drops that many of its oldest sends to the replica: those are in the report now. Exact however many
pickers there are, where a time window either forgot sends still on their way (a burst looked like
no load) or counted arrived ones twice (the load guard fired early).

So the load a replica reports counts every placed request from its arrival to its answer's end
(`Arrivals.holding`), not only those its engine has: one still in the edge's checks or being
rendered would be in neither the picker's sends nor the engine's count.

A module of its own for the reason services/routing/decisions.py gives: the policy, pickled by value
into the picker's process, reads `picker` from the live module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEADER = "x-serve-router-picker"
_HEADER = HEADER.encode()
MAX_PICKERS = 64  # a replica keeps the counts of this many pickers (each restart of one is a new name)

picker = ""  # the name of this process's ReplicaPicker; empty in every other process


@dataclass
class Arrivals:
    """An engine replica's book of the requests pickers placed on it."""

    counts: dict[str, int] = field(default_factory=dict)  # received, by the picker that placed them
    holding: int = 0  # received and not yet answered in full


class ArrivalCounter:
    """ASGI middleware of an engine replica's app: counts each request by the picker that placed it,
    and holds it in `holding` until the app is done with it (the stream ended or the client left)."""

    def __init__(self, app: Any, arrivals: Arrivals) -> None:
        self.app, self.arrivals = app, arrivals

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = (
            next((value for key, value in scope["headers"] if key == _HEADER), None)
            if scope["type"] == "http"
            else None
        )
        if name is None:
            await self.app(scope, receive, send)
            return
        counts, key = self.arrivals.counts, name[:64].decode(errors="replace")
        if key not in counts and len(counts) >= MAX_PICKERS:
            del counts[next(iter(counts))]  # the oldest picker's
        counts[key] = counts.get(key, 0) + 1
        self.arrivals.holding += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.arrivals.holding -= 1
