"""How a ReplicaPicker tells its sends that reached an engine replica from those still on their way.

The picker names itself in a header that HAProxy adds to each request it places (`request_headers`
in the picker's answer; Ray's HAProxy removes client-sent headers of that prefix). Each engine replica
counts the requests it received per picker and reports the counts with its load, and the policy
drops that many of its oldest sends to the replica: those are in the report now. Exact however many
pickers there are, where a time window either forgot sends still on their way (a burst looked like
no load) or counted arrived ones twice (the load guard fired early).

A module of its own for the reason services/routing/decisions.py gives: the policy, pickled by value
into the picker's process, reads `picker` from the live module.
"""

from __future__ import annotations

from typing import Any

HEADER = "x-serve-router-picker"
_HEADER = HEADER.encode()
MAX_PICKERS = 64  # a replica keeps the counts of this many pickers (each restart of one is a new name)

picker = ""  # the name of this process's ReplicaPicker; empty in every other process


class ArrivalCounter:
    """ASGI middleware of an engine replica's app: counts each request by the picker that placed it."""

    def __init__(self, app: Any, counts: dict[str, int]) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            name = next((value for key, value in scope["headers"] if key == _HEADER), None)
            if name is not None:
                key = name[:64].decode(errors="replace")
                if key not in self.counts and len(self.counts) >= MAX_PICKERS:
                    del self.counts[next(iter(self.counts))]  # the oldest picker's
                self.counts[key] = self.counts.get(key, 0) + 1
        await self.app(scope, receive, send)
