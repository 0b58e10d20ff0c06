"""Relaying one engine stream to one HTTP client.

The relay passes vLLM's SSE chunks through untouched, times the first one, and turns a dead
replica or a passed deadline into an in-band error event instead of a hang. Whatever way the
request ends (finished, failed, timed out, or the client left, even before the first byte was
sent), `finish` runs exactly once: it aborts unfinished engine work, records the request's
metrics and releases its admission slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from services.core.errors import Code
from services.engine import sse
from services.engine.interface import REPLICA_GONE, EngineStream
from services.engine.protocol import Outcome
from services.metrics.records import CompletionRecord, RecordBuffer

logger = logging.getLogger("slmserve.edge")


class StreamRelay:
    def __init__(
        self,
        stream: EngineStream,
        request_id: str,
        record: CompletionRecord,
        arrived: float,
        records: RecordBuffer,
        deadline: float,
        release: Callable[[], None],
        on_replica_failure: Callable[[], None],
    ) -> None:
        self.stream, self.request_id, self.record, self.arrived = stream, request_id, record, arrived
        self.records, self.deadline = records, deadline
        self.release, self.on_replica_failure = release, on_replica_failure
        self.outcome: Outcome | None = None
        self.finished = False
        self.chunks = self._chunks()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.chunks

    async def _chunks(self) -> AsyncGenerator[str, None]:
        record = self.record
        try:
            async with asyncio.timeout_at(self.deadline):
                async for item in self.stream:
                    if isinstance(item, str):
                        handed = time.perf_counter()
                        if record.ttft_s is None:
                            record.ttft_s = handed - self.arrived
                        yield item
                        record.relay_s = (record.relay_s or 0.0) + time.perf_counter() - handed
                    elif isinstance(item, Outcome):
                        self.outcome = item
        except TimeoutError:
            record.finish_reason = "timeout"
            yield sse.error_event(504, "the request exceeded its deadline and was aborted", code=Code.TIMEOUT)
            yield sse.DONE
        except Exception as error:
            logger.warning("stream %s broke: %s", self.request_id, error)
            if isinstance(error, REPLICA_GONE):
                self.on_replica_failure()
            record.finish_reason = "error"
            yield sse.error_event(
                503, "the model replica serving this stream failed; retry the request", code=Code.REPLICA_FAILED
            )
            yield sse.DONE
        finally:
            self.finish()

    def finish(self) -> None:
        """Idempotent end of the request: abort what the engine still does for it, record, release."""
        if self.finished:
            return
        self.finished = True
        record = self.record
        record.e2e_s = time.perf_counter() - self.arrived
        if self.outcome is not None:
            record.apply(self.outcome)
            record.success = self.outcome.succeeded
        else:  # the client left, the deadline passed or the replica died before the stream finished
            self.stream.cancel()  # makes the engine abort the request; a no-op once the stream ended
            record.success = False
            record.finish_reason = record.finish_reason or "abort"
        self.records.add(record)
        self.release()


class RelayResponse(StreamingResponse):
    """A streaming response that always finishes its relay: Starlette never starts iterating the
    body when the client is gone before the response starts, so the relay's own `finally` alone
    would leak the admission slot and leave the engine generating for nobody."""

    def __init__(self, relay: StreamRelay) -> None:
        super().__init__(
            relay, media_type=sse.MEDIA_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.relay = relay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.chunks.aclose()  # runs the relay's finally if it had started
            self.relay.finish()  # and covers the case where it never started
