"""Records a real CPU engine's vLLM series (one `slmserve serve` of the embedded model, after a few
requests) as the text each stand-in replica ships to the metrics hub, so that the hub's input in a
scale run has a real engine's families, labels and size.

    .venv/bin/python -m loadtests.standin.record
"""

from __future__ import annotations

from prometheus_client import generate_latest

from loadtests.scale_costs import one_engine_families
from loadtests.standin.engine import SERIES_FILE
from services.metrics.engine_series import Families


def main() -> int:
    SERIES_FILE.write_bytes(generate_latest(Families(one_engine_families())))  # type: ignore[arg-type]
    print(f"[standin] wrote {SERIES_FILE}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
