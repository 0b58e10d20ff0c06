"""The relay's end-of-request work runs exactly once however the request ends, including when the
client is gone before the response starts: Starlette then never iterates the body, so without
RelayResponse the admission slot would leak and the engine would generate for nobody.

That window (engine head received, response not yet started) is too narrow to hit from a real
socket, so this drives RelayResponse with Starlette's real StreamingResponse machinery and an ASGI
server side that reports the client gone; the engine stream is a stand-in for Ray Serve's
DeploymentResponseGenerator or the engine's own generator (the live path is covered in test_disconnects.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.edge.relay import RelayResponse, StreamRelay
from services.engine.protocol import Outcome
from services.metrics.records import CompletionRecord, RecordBuffer


class EngineStream:
    def __init__(self, chunks: list[object]) -> None:
        self.chunks = list(chunks)
        self.cancelled = False

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> object:
        if not self.chunks:
            raise StopAsyncIteration
        await asyncio.sleep(0)
        return self.chunks.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


def _relay(stream: EngineStream, released: list[str]) -> tuple[StreamRelay, RecordBuffer]:
    records = RecordBuffer(hub=None, period_s=3600)
    relay = StreamRelay(
        stream,
        "req-1",
        CompletionRecord("m", success=True),
        time.perf_counter(),
        records,
        asyncio.get_running_loop().time() + 60,
        lambda: released.append("slot"),
        lambda: None,
    )
    return relay, records


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_client_gone_before_the_first_byte_releases_once_and_aborts_the_engine(spec_version):
    async def scenario() -> None:
        stream, released = EngineStream(["data: {}\n\n"] * 3), []
        relay, records = _relay(stream, released)

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            raise OSError("connection reset by peer")

        try:
            await RelayResponse(relay)({"type": "http", "asgi": {"spec_version": spec_version}}, receive, send)
        except Exception:  # Starlette reports the disconnect as ClientDisconnect on ASGI 2.4
            pass
        assert released == ["slot"]
        assert stream.cancelled and len(stream.chunks) == 3  # nothing was pulled, the engine was told to stop
        assert [(r.success, r.finish_reason) for r in records._records] == [(False, "abort")]

    asyncio.run(scenario())


def test_a_finished_stream_is_recorded_and_released_once():
    async def scenario() -> None:
        outcome = Outcome(prompt_tokens=3, generation_tokens=2, finish_reason="length")
        stream, released = EngineStream(["data: a\n\n", "data: b\n\n", outcome, "data: [DONE]\n\n"]), []
        relay, records = _relay(stream, released)
        sent: list[dict] = []

        async def receive() -> dict:
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict) -> None:
            sent.append(message)

        await RelayResponse(relay)({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
        body = b"".join(message.get("body", b"") for message in sent)
        assert body == b"data: a\n\ndata: b\n\ndata: [DONE]\n\n"
        assert released == ["slot"] and not stream.cancelled
        record = records._records[-1]
        assert (record.success, record.finish_reason, record.generation_tokens) == (True, "length", 2)
        assert record.ttft_s is not None and record.e2e_s >= record.ttft_s

    asyncio.run(scenario())
