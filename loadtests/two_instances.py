"""Two `slmserve serve` started at the same moment on this machine (issue 34 item 4): each must come
up on its own port with its own Ray, or end with one clear line; neither may answer for the other.

    .venv/bin/python -m loadtests.two_instances   # about 3 minutes on 2 cores
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time

import httpx

from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from testkit.serving import serving

BOTH_UP_TIMEOUT_S = 900


def one(both_up: threading.Barrier, started: float) -> tuple[str, float, str]:
    """An instance: started, timed to ready, asked which replica answers its port, held until the
    other is up too (so both run at once), then stopped. A start that fails is reported as such."""
    try:
        with serving("cpu") as server:
            ready_s = time.monotonic() - started
            replica = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                timeout=60,
            ).headers.get("x-slmserve-replica", "?")
            both_up.wait(BOTH_UP_TIMEOUT_S)
            return server.base_url, ready_s, replica
    except Exception as error:  # what a user would have seen, in one line
        both_up.abort()
        lines = str(error).strip().splitlines() or [type(error).__name__]
        return "-", time.monotonic() - started, f"failed: {lines[-1][:200]}"


def main(argv: list[str] | None = None) -> int:
    command_line(__doc__).parse_args(argv)  # no options: --help says what the run does
    started = time.monotonic()
    both_up = threading.Barrier(2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: one(both_up, started), range(2)))
    ok = all(not replica.startswith("failed") for _, _, replica in results) and results[0][2] != results[1][2]
    rows = "".join(f"| {url} | {ready:.0f} s | {replica} |\n" for url, ready, replica in results)
    when = started_at()
    verdict = "pass: both ready at once, each answering from its own replica" if ok else "FAIL"
    body = f"""## Two instances started at once on one machine

Run {when}: `.venv/bin/python -m loadtests.two_instances`. Two `slmserve serve --catalog cpu` started
in the same second on this 2-core machine, each on a free port, and held until both were up; each is
asked once which engine replica answers its port. Verdict: {verdict}.

| instance | ready after | replica that answered |
|---|---|---|
{rows}"""
    write_section(ROOT / "docs" / "reliability.md", "two-instances", body)
    print(body, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
