"""SLO-aware replica autoscaling: a Ray Serve custom autoscaling policy (class form, configured per
model from the catalog's `autoscaling_config.slo`).

Engine replicas report, through Serve's `record_autoscaling_stats`, the requests waiting in their
engine and the p90 TTFT of the last seconds (services/engine/deployment.py). Each control-loop tick:

- scale up by one while the waiting queue exceeds `queue_per_replica` per replica, or the TTFT p90
  exceeds `ttft_p90_s`;
- scale down by one when nothing waits, TTFT is under half its target, and the requests held would
  fit in one replica fewer at 80% of `target_ongoing_requests` (the hysteresis: up and down never
  hold at once);
- never change again in the same direction within `cooldown_s` of the last change, so one load
  step makes one scale-up, not a run of them while the new replica's effect shows.

Ray Serve wraps the policy with the config's min/max bounds and upscale/downscale delays. This
module imports only the standard library: Ray pickles it by value into the Serve controller.
"""

from __future__ import annotations

import time
from typing import Any

DOWNSCALE_FILL = 0.8  # scale down only if the held requests fit at this fraction of one replica fewer


class SloPolicy:
    def __init__(self, ttft_p90_s: float, queue_per_replica: float, cooldown_s: float) -> None:
        self.ttft_p90_s = ttft_p90_s
        self.queue_per_replica = queue_per_replica
        self.cooldown_s = cooldown_s

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        current = ctx.current_num_replicas
        if current == 0:  # Ray's own cold-start path starts the first replica
            return ctx.target_num_replicas, state
        metrics = ctx.aggregated_metrics or {}
        waiting = sum(metrics.get("waiting", {}).values())
        ttft = max(metrics.get("ttft_p90_s", {}).values(), default=0.0)
        now = ctx.current_time or time.time()
        desired = ctx.target_num_replicas
        over = waiting > self.queue_per_replica * current or ttft > self.ttft_p90_s
        target_ongoing = getattr(ctx.config, "target_ongoing_requests", None) or 1
        idle = (
            waiting == 0
            and ttft <= self.ttft_p90_s / 2
            and ctx.total_num_requests <= DOWNSCALE_FILL * target_ongoing * (current - 1)
        )
        # The last replica goes too once it reports having nothing to do: Ray bounds the target by
        # min_replicas, so only a model that may scale to zero (0) gets there, after its delay to zero.
        lowest = 0 if metrics.get("waiting") else 1
        if over and _cooled(ctx.last_scale_up_time, now, self.cooldown_s):
            desired = current + 1
        elif idle and current > lowest and _cooled(ctx.last_scale_down_time, now, self.cooldown_s):
            desired = current - 1
        state["slmserve"] = {"waiting": waiting, "ttft_p90_s": ttft, "over": over, "idle": idle}
        return desired, state


def _cooled(last_change: float | None, now: float, cooldown_s: float) -> bool:
    return last_change is None or now - last_change >= cooldown_s
