"""One stream at a time against a running server, timing the gaps between its chunks, while its
`/metrics` is scraped three times a second (as `make bench` scrapes): the steadiness of a stream,
which `make bench`'s ITL figures mix with the load of its other streams.

    .venv/bin/python -m loadtests.stream_gaps --url http://127.0.0.1:8000 [--seconds 40]

Prints the gaps' p50 / p95 / p99 / max in ms, and the slow ones: gaps more than `--slow-over-ms`
over the median, how many a second, and the median time from one to the next (a periodic stall,
such as a once-a-second render in the streaming process, shows as a spacing near its period).
Used for docs/benchmarks.md's "platform off the model's cores" table against `slmserve serve` and
bare vLLM (its `/metrics` is scraped the same).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass

import httpx

from loadtests.harness import command_line, require_local
from loadtests.workload import chat_body, percentile

SCRAPE_HZ = 3


async def _scrape_forever(client: httpx.AsyncClient, url: str) -> None:
    while True:
        await client.get(f"{url}/metrics")
        await asyncio.sleep(1 / SCRAPE_HZ)


Gap = tuple[float, float]  # (when the later chunk arrived, seconds since the one before), monotonic clock


async def gaps(url: str, model: str, seconds: float) -> list[Gap]:
    """The gaps between consecutive token chunks (the role chunk aside), one stream after another."""
    body = {**chat_body(64, 64), "model": model, "stream": True}
    found: list[Gap] = []
    async with httpx.AsyncClient(timeout=120) as client:
        scraper = asyncio.create_task(_scrape_forever(client, url))
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                arrivals: list[float] = []
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            arrivals.append(time.monotonic())
                found += [(later, later - earlier) for earlier, later in itertools.pairwise(arrivals[1:])]
        finally:
            scraper.cancel()
    return found


@dataclass
class SlowGaps:
    count: int
    per_second: float
    spacing_p50_s: float | None  # median time from one slow gap to the next (None: fewer than two)


def slow_gaps(found: list[Gap], over_s: float) -> SlowGaps:
    """The gaps more than `over_s` over the median gap, over the span the gaps cover."""
    median = percentile([gap for _, gap in found], 50)
    slow = [at for at, gap in found if gap > median + over_s]
    span = found[-1][0] - found[0][0] if len(found) > 1 else 0.0
    spacings = [later - earlier for earlier, later in itertools.pairwise(slow)]
    return SlowGaps(len(slow), len(slow) / span if span > 0 else 0.0, percentile(spacings, 50) if spacings else None)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--url", required=True, help="the server's base URL (this machine only)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--slow-over-ms", type=float, default=8.0, help="a slow gap is this much over the median")
    args = parser.parse_args(argv)
    require_local(parser, args.url)
    found = asyncio.run(gaps(args.url.rstrip("/"), args.model, args.seconds))
    ms = [gap * 1e3 for _, gap in found]
    slow = slow_gaps(found, args.slow_over_ms / 1e3)
    spacing = f"{slow.spacing_p50_s:.2f} s" if slow.spacing_p50_s is not None else "-"
    print(
        f"{len(ms)} gaps: p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f}, "
        f"p99 {percentile(ms, 99):.1f}, max {max(ms):.1f}; {slow.count} slow (over the median by "
        f"{args.slow_over_ms:g} ms), {slow.per_second:.2f} a second, median spacing {spacing}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
