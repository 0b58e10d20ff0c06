"""One stream at a time against a running server, timing the gaps between its chunks, while its
`/metrics` is scraped three times a second (as `make bench` scrapes): the steadiness of a stream,
which `make bench`'s ITL figures mix with the load of its other streams.

    .venv/bin/python -m loadtests.stream_gaps --url http://127.0.0.1:8000 [--seconds 40]

Prints the gaps' p50 / p95 / p99 / max in ms. Used for docs/benchmarks.md's "platform off the
model's cores" table against `slmserve serve` and bare vLLM (its `/metrics` is scraped the same).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

import httpx

from loadtests.harness import command_line, require_local
from loadtests.workload import chat_body, percentile

SCRAPE_HZ = 3


async def _scrape_forever(client: httpx.AsyncClient, url: str) -> None:
    while True:
        await client.get(f"{url}/metrics")
        await asyncio.sleep(1 / SCRAPE_HZ)


async def gaps(url: str, model: str, seconds: float) -> list[float]:
    """Seconds between consecutive token chunks (the role chunk aside), one stream after another."""
    body = {**chat_body(64, 64), "model": model, "stream": True}
    found: list[float] = []
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
                found += [later - earlier for earlier, later in itertools.pairwise(arrivals[1:])]
        finally:
            scraper.cancel()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--url", required=True, help="the server's base URL (this machine only)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args(argv)
    require_local(parser, args.url)
    found = asyncio.run(gaps(args.url.rstrip("/"), args.model, args.seconds))
    ms = [gap * 1e3 for gap in found]
    print(
        f"{len(ms)} gaps: p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f}, "
        f"p99 {percentile(ms, 99):.1f}, max {max(ms):.1f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
