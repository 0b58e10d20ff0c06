"""Adaptive coalescing of streamed chunks.

Every item of a Ray Serve stream is one object sent between processes; at one token per item that
per-item cost dominates the platform's overhead under load. `coalesce` forwards items as they come,
and when the consumer (the transport) is busier than the producer, joins the string items that
queued up meanwhile into one. A lone stream is never delayed (unlike fixed-interval batching);
a loaded one sends fewer, larger items. Non-string items pass through in order, unjoined.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def coalesce(source: AsyncIterator[Any]) -> AsyncIterator[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except Exception as error:
            queue.put_nowait(_Failure(error))
        finally:
            queue.put_nowait(_END)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        pending: Any = await queue.get()
        while pending is not _END:
            if isinstance(pending, _Failure):
                raise pending.error
            if not isinstance(pending, str):
                yield pending
                pending = await queue.get()
                continue
            parts = [pending]
            pending = None
            while not queue.empty():
                item = queue.get_nowait()
                if not isinstance(item, str):
                    pending = item
                    break
                parts.append(item)
            yield "".join(parts) if len(parts) > 1 else parts[0]
            if pending is None:
                pending = await queue.get()
    finally:
        # The consumer left (client disconnect) or we are done: stop the producer, which makes
        # vLLM abort the request.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
