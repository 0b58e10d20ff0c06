"""Catalog entries for models that scale to zero (issue 29), shared by the live test
(tests/live/one_engine/test_scale_to_zero.py) and the benchmark (loadtests/scale_to_zero.py)."""

from __future__ import annotations

from typing import Any


def at_zero(entry: dict[str, Any], name: str, hold_timeout_s: float, to_zero_s: float) -> dict[str, Any]:
    """A copy of a catalog entry under `name` that starts with no replica, holds its requests up to
    `hold_timeout_s` while one starts, and goes back to zero after `to_zero_s` without a request."""
    deployment = {key: value for key, value in entry["deployment"].items() if key != "num_replicas"}
    return {
        **entry,
        "name": name,
        "aliases": [],
        "deployment": {
            **deployment,
            "autoscaling_config": {
                "min_replicas": 0,
                "max_replicas": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": to_zero_s,
                "downscale_to_zero_delay_s": to_zero_s,
                "look_back_period_s": 2,  # Ray averages 30 s of load by default: the decision lags as long
            },
        },
        "idle": {"hold_timeout_s": hold_timeout_s},
    }
