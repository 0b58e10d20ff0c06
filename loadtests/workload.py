"""The benchmark workload: N streamed chat requests at a fixed concurrency, fixed prompt and
output lengths (ignore_eos), measured per request with the same SSE meter as the locust users."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import httpx

from loadtests.sse import StreamMeter, StreamStats, prompt_of


@dataclass
class LevelResult:
    system: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    output_tokens: int
    ttft_s: list[float]
    itl_s: list[float]
    e2e_s: list[float]

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.wall_s

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.wall_s

    def merged(self, other: LevelResult) -> LevelResult:
        return LevelResult(
            self.system,
            self.concurrency,
            self.requests + other.requests,
            self.errors + other.errors,
            self.wall_s + other.wall_s,
            self.output_tokens + other.output_tokens,
            self.ttft_s + other.ttft_s,
            self.itl_s + other.itl_s,
            self.e2e_s + other.e2e_s,
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> StreamStats:
    started = time.perf_counter()
    meter = StreamMeter(started)
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                meter.stats.error = f"HTTP {response.status_code}"
                return meter.finish(time.perf_counter())
            async for line in response.aiter_lines():
                meter.feed(line, time.perf_counter())
    except httpx.HTTPError as error:
        meter.stats.error = type(error).__name__
    return meter.finish(time.perf_counter())


def chat_body(prompt_words: int, max_tokens: int, extra_body: dict | None = None) -> dict:
    """A streamed chat body of fixed prompt and output lengths (no model: the caller names it)."""
    return {
        "messages": [{"role": "user", "content": prompt_of(prompt_words)}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra_body or {}),
    }


async def run_bodies(
    chat_url: str, bodies: list[dict], concurrency: int, requests: int
) -> tuple[list[tuple[int, StreamStats]], float]:
    """`requests` streams at `concurrency`, request i sending bodies[i % len]: (body index, stats) per
    request, and the wall time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    results: list[tuple[int, StreamStats]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits, trust_env=False) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait() % len(bodies)
                results.append((index, await _one(client, chat_url, bodies[index])))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return results, wall


def level_result(system: str, concurrency: int, stats: list[StreamStats], wall_s: float) -> LevelResult:
    ok = [r for r in stats if r.error is None]
    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=len(stats),
        errors=len(stats) - len(ok),
        wall_s=wall_s,
        output_tokens=sum(r.output_tokens for r in ok),
        ttft_s=[r.ttft_s for r in ok if r.ttft_s is not None],
        itl_s=[gap for r in ok for gap in r.itl_s],
        e2e_s=[r.e2e_s for r in ok if r.e2e_s is not None],
    )


async def run_level(
    system: str,
    chat_url: str,
    model: str | list[str],
    concurrency: int,
    requests: int,
    prompt_words: int,
    max_tokens: int,
    extra_body: dict | None = None,
) -> LevelResult:
    """`model` may list several names (LoRA adapters, say): request i asks for model[i % len]."""
    models = [model] if isinstance(model, str) else model
    body = chat_body(prompt_words, max_tokens, extra_body)
    results, wall = await run_bodies(chat_url, [{"model": name, **body} for name in models], concurrency, requests)
    return level_result(system, concurrency, [stats for _, stats in results], wall)


def row(setup: str, traffic: str, result: LevelResult) -> dict:
    """One level's figures as a table row (the GPU runs' JSON and markdown)."""
    return {
        "setup": setup,
        "traffic": traffic,
        "concurrency": result.concurrency,
        "requests": result.requests,
        "errors": result.errors,
        "output_tok_per_s": round(result.output_tok_per_s, 1),
        "ttft_p50_ms": round(percentile(result.ttft_s, 50) * 1000, 1),
        "ttft_p95_ms": round(percentile(result.ttft_s, 95) * 1000, 1),
        "itl_p50_ms": round(percentile(result.itl_s, 50) * 1000, 2),
        "itl_p95_ms": round(percentile(result.itl_s, 95) * 1000, 2),
    }
