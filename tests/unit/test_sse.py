"""The SSE wire format slmserve reads and writes (services/engine/sse.py), on frames shaped as vLLM writes them."""

from __future__ import annotations

import json

from services.engine import sse

HEAD = 'data: {"id":"c","object":"chat.completion.chunk",'
CHUNK = HEAD + '"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
LAST = HEAD + '"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
USAGE = HEAD + '"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'


def test_usage_and_finish_reason_are_read_from_vllm_frames():
    assert sse.usage_of(USAGE) == {"prompt_tokens": 7, "completion_tokens": 3}
    assert sse.usage_of(CHUNK) is None and sse.usage_of(LAST) is None
    assert sse.finish_reason_of(CHUNK) is None
    assert sse.finish_reason_of(CHUNK + LAST) == "length"  # a coalesced frame: the last chunk's reason
    assert sse.is_done(sse.DONE) and not sse.is_done(CHUNK)


def test_an_error_event_is_an_openai_error_in_a_data_line():
    frame = sse.error_event(504, "too slow", code="timeout")
    assert frame.startswith("data: ") and frame.endswith("\n\n")
    error = json.loads(frame.removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "timeout"


def test_a_finishing_chunk_gets_vllm_s_fingerprint_once():
    frame = 'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    stamped = sse.with_fingerprint(frame, "fp-1")
    assert json.loads(stamped.removeprefix("data: "))["system_fingerprint"] == "fp-1" and stamped.endswith("\n\n")
    assert sse.with_fingerprint(stamped, "fp-2") == stamped
