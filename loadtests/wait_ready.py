"""Until a slmserve answers its readiness probe: `make loadtest` before its run, and the chart's
load test (templates/loadtest.yaml) before its master starts.

    python -m loadtests.wait_ready http://slmserve:8000 3600   # exits 1 if not ready within 3600 s
"""

from __future__ import annotations

import sys
import time
import urllib.request


def ready(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"{host}/v1/health/ready", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    host, timeout_s = (argv if argv is not None else sys.argv[1:])[:2]
    started = time.monotonic()
    while not ready(host):
        waited = time.monotonic() - started
        if waited > float(timeout_s):
            print(f"[wait_ready] {host} not ready after {waited:.0f}s", flush=True)
            return 1
        print(f"[wait_ready] {host} not ready yet ({waited:.0f}s)", flush=True)
        time.sleep(10)
    print(f"[wait_ready] {host} ready", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
