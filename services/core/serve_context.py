"""Work a replica does for itself, not for the request that happens to be running.

Ray Serve counts every handle call made while a request runs as that request's child, and when the
request is cancelled (its client disconnected) it cancels those children too. That is right for the
engine call of a stream, and wrong for what must outlive the request: an admission ticket granted
while the client was leaving, the release of a ticket, and the replica's background loops (metric
flushes, readiness polls) that a request happened to start. Those run here, in a fresh context that
belongs to no request.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def outside_request(function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Call `function` outside the current Serve request (a handle call made there is no child of it)."""
    return contextvars.Context().run(function, *args, **kwargs)


def background_task(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task of the replica's own: Serve never cancels it with the request that started it."""
    return asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
