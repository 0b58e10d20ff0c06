"""The SSE/TTFT measurement logic against a known stream with known arrival times."""

from __future__ import annotations

import json

from loadtests.sse import StreamMeter, parse_model_mix, prompt_of


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> str:
    choices = [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return "data: " + json.dumps({"choices": choices, **({"usage": usage} if usage else {})})


def test_known_stream_gives_exact_ttft_itl_and_tokens():
    meter = StreamMeter(started=100.0)
    timeline = [
        (100.05, chunk("")),  # role chunk, no text: not a token
        (100.25, chunk("Hello")),  # first token: TTFT 0.25
        (100.25, ""),  # SSE separator
        (100.30, ": keep-alive"),  # comment
        (100.35, chunk(" world")),  # ITL 0.10
        (100.65, chunk("!", "stop")),  # ITL 0.30
        (100.70, chunk(usage={"prompt_tokens": 5, "completion_tokens": 3})),
        (100.80, "data: [DONE]"),
    ]
    for now, line in timeline:
        meter.feed(line, now)
    stats = meter.finish(101.0)
    assert abs(stats.ttft_s - 0.25) < 1e-9
    assert [round(x, 9) for x in stats.itl_s] == [0.1, 0.3]
    assert abs(stats.mean_itl_s - 0.2) < 1e-9
    assert abs(stats.e2e_s - 0.8) < 1e-9  # at [DONE], not at finish()
    assert stats.output_tokens == 3 and stats.content_chunks == 3
    assert stats.finish_reason == "stop" and stats.error is None


def test_completions_chunks_and_missing_usage_count_chunks():
    meter = StreamMeter(started=0.0)
    for now, text in ((0.5, "a"), (0.7, "b")):
        meter.feed("data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}), now)
    meter.feed(b"data: [DONE]", 0.8)
    stats = meter.finish(0.9)
    assert stats.output_tokens == 2 and stats.ttft_s == 0.5


def test_errors_in_band_and_truncated_streams_are_reported():
    meter = StreamMeter(started=0.0)
    meter.feed('data: {"error": {"message": "replica failed", "code": "replica_failed"}}', 0.1)
    assert meter.finish(0.2).error == "replica failed"
    truncated = StreamMeter(started=0.0)
    truncated.feed(chunk("x"), 0.1)
    assert truncated.finish(0.2).error == "stream ended without [DONE]"


def test_model_mix_and_prompt_helpers():
    assert parse_model_mix("default:3, moe:1,vision") == [("default", 3.0), ("moe", 1.0), ("vision", 1.0)]
    assert parse_model_mix("") == []
    assert prompt_of(64) == prompt_of(64) and len(prompt_of(64).split()) == 61


def test_slow_gaps_are_those_over_the_median_and_their_spacing_shows_a_period():
    from loadtests.stream_gaps import slow_gaps

    # 60 ms gaps for 10 s, every 16th one 20 ms longer: a stall about once a second
    found, at = [], 0.0
    for index in range(160):
        gap = 0.080 if index % 16 == 15 else 0.060
        at += gap
        found.append((at, gap))
    slow = slow_gaps(found, over_s=0.008)
    assert slow.count == 10
    assert slow.spacing_p50_s is not None and abs(slow.spacing_p50_s - (15 * 0.060 + 0.080)) < 1e-9
    assert 0.9 < slow.per_second < 1.1
    steady = slow_gaps([(0.06 * (index + 1), 0.060) for index in range(50)], over_s=0.008)
    assert steady.count == 0 and steady.spacing_p50_s is None
