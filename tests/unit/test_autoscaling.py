"""The SLO autoscaling policy on its own (services/engine/autoscaling.py), and the catalog that configures it;
the live behaviour is `make autoscaling` (loadtests/autoscaling_run.py, docs/autoscaling.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.core.catalog import CatalogError, parse_catalog
from services.engine.autoscaling import SloPolicy


@dataclass
class Config:
    target_ongoing_requests: float = 4


@dataclass
class Context:  # the fields of Ray Serve's AutoscalingContext the policy reads
    current_num_replicas: int = 1
    target_num_replicas: int = 1
    total_num_requests: float = 0
    aggregated_metrics: dict = field(default_factory=dict)
    policy_state: dict = field(default_factory=dict)
    last_scale_up_time: float | None = None
    last_scale_down_time: float | None = None
    current_time: float = 1000.0
    config: Config = field(default_factory=Config)


def signals(waiting: list[float], ttft: list[float]) -> dict:
    return {
        "waiting": {f"r{i}": value for i, value in enumerate(waiting)},
        "ttft_p90_s": {f"r{i}": value for i, value in enumerate(ttft)},
    }


POLICY = SloPolicy(ttft_p90_s=2.0, queue_per_replica=2, cooldown_s=60)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (Context(total_num_requests=10, aggregated_metrics=signals([6], [0.5])), 2),  # queue over 2 per replica
        (Context(total_num_requests=3, aggregated_metrics=signals([0], [2.5])), 2),  # TTFT over its target
        (Context(total_num_requests=3, aggregated_metrics=signals([1], [1.5])), 1),  # within both: hold
        (Context(2, 2, total_num_requests=1, aggregated_metrics=signals([0, 0], [0.2, 0.3])), 1),  # idle: down
        (Context(2, 2, total_num_requests=4, aggregated_metrics=signals([0, 0], [0.2, 0.3])), 2),  # 4 > 0.8 x 4
        (Context(2, 2, total_num_requests=1, aggregated_metrics=signals([0, 0], [0.2, 1.5])), 2),  # TTFT not low
        (Context(1, 2, total_num_requests=10, aggregated_metrics=signals([6], [3.0])), 2),  # the second is starting
        (Context(0, 1, total_num_requests=5), 1),  # Ray's cold start owns 0 replicas
        (Context(total_num_requests=0), 1),  # no metrics yet: hold
        (Context(total_num_requests=0, aggregated_metrics=signals([0], [0.1])), 0),  # idle: Ray bounds by min_replicas
        (Context(total_num_requests=1, aggregated_metrics=signals([0], [0.1])), 1),  # one request: the last stays
    ],
)
def test_one_step_per_tick_towards_the_slo(context, expected):
    desired, state = POLICY(context)
    assert desired == expected
    if context.current_num_replicas:
        assert set(state["slmserve"]) == {"waiting", "ttft_p90_s", "over", "idle"}


def test_a_cooldown_keeps_one_load_step_to_one_scale_up_and_one_scale_down():
    over = signals([8, 8], [5, 5])
    assert POLICY(Context(2, 2, 20, over, last_scale_up_time=970.0)) == (2, POLICY(Context(2, 2, 20, over))[1])
    assert POLICY(Context(2, 2, 20, over, last_scale_up_time=930.0))[0] == 3  # 70 s later: allowed again
    idle = signals([0, 0, 0], [0, 0, 0])
    assert POLICY(Context(3, 3, 0, idle, last_scale_down_time=990.0))[0] == 3
    assert POLICY(Context(3, 3, 0, idle, last_scale_down_time=900.0))[0] == 2


def test_the_catalog_turns_slo_into_ray_s_custom_policy_and_scale_to_zero_needs_a_hold_policy():
    from ray.serve.config import AutoscalingConfig

    entry = {
        "name": "m",
        "source": "org/m",
        "deployment": {
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 3,
                "upscale_delay_s": 5,
                "slo": {"ttft_p90_s": 1.5},
            }
        },
    }
    options = parse_catalog({"models": [entry]}).models[0].deployment.to_serve_options()
    ray_config = AutoscalingConfig(**options["autoscaling_config"])  # Ray accepts it and pickles the policy
    assert ray_config.policy.policy_function == "services.engine.autoscaling:SloPolicy"
    assert ray_config.policy.policy_kwargs == {"ttft_p90_s": 1.5, "queue_per_replica": 4, "cooldown_s": 60}
    assert callable(ray_config.policy.get_policy())
    plain = parse_catalog({"models": [{**entry, "deployment": {"autoscaling_config": {"max_replicas": 2}}}]})
    assert "policy" not in plain.models[0].deployment.to_serve_options()["autoscaling_config"]
    to_zero = {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2, "downscale_to_zero_delay_s": 30}}
    with pytest.raises(CatalogError, match="idle"):
        parse_catalog({"models": [{**entry, "deployment": to_zero}]})
    with pytest.raises(CatalogError, match="scales to zero"):
        parse_catalog({"models": [{**entry, "idle": {"hold_timeout_s": 30}}]})
    held = parse_catalog({"models": [{**entry, "deployment": to_zero, "idle": {"hold_timeout_s": 30}}]}).models[0]
    assert held.scales_to_zero and held.idle is not None and held.idle.hold_timeout_s == 30
    zero = AutoscalingConfig(**held.deployment.to_serve_options()["autoscaling_config"])
    assert zero.min_replicas == 0 and zero.downscale_to_zero_delay_s == 30


def test_recent_ttft_quantiles_come_from_the_window_s_observations_only():
    from services.metrics.recent import RecentQuantile

    recent = RecentQuantile(window_s=10)
    assert recent.quantile(0.9) == 0.0
    recent.add({0.5: 0, 1.0: 0, 2.5: 0, float("inf"): 0}, now=0)
    recent.add({0.5: 5, 1.0: 8, 2.5: 10, float("inf"): 10}, now=5)
    assert recent.quantile(0.5) == 0.5 and recent.quantile(0.9) == pytest.approx(1.75)  # interpolated
    recent.add({0.5: 5, 1.0: 8, 2.5: 10, float("inf"): 12}, now=8)  # two slower than every bound
    assert recent.quantile(0.95) == 2.5  # +Inf: the highest finite bound
    recent.add({0.5: 5, 1.0: 8, 2.5: 10, float("inf"): 12}, now=30)
    assert recent.quantile(0.9) == 0.0  # nothing observed in the last 10 s


def test_an_slo_may_follow_one_service_class_whose_priority_reaches_the_engine_replicas():
    from ray.serve.config import AutoscalingConfig

    classes = {
        "classes": {"interactive": {"priority": 0, "share": 3}, "batch": {"priority": 10, "share": 1}},
        "tenants": {"app": "interactive", "nightly": "batch"},
    }
    slo = {"ttft_p90_s": 1.0, "service_class": "interactive"}
    entry = {"name": "m", "source": "org/m", "deployment": {"autoscaling_config": {"max_replicas": 3, "slo": slo}}}
    catalog = parse_catalog({"edge": {"service_classes": classes}, "models": [entry]})
    config = catalog.models[0].deployment.autoscaling_config
    assert config is not None and config.slo is not None and config.slo.class_priority == 0
    ray_config = AutoscalingConfig(**catalog.models[0].deployment.to_serve_options()["autoscaling_config"])
    assert ray_config.policy.policy_kwargs == {"ttft_p90_s": 1.0, "queue_per_replica": 4, "cooldown_s": 60}
    # the replicas get the entry alone, and keep the class's priority
    from services.core.catalog import ModelEntry

    again = ModelEntry.model_validate(catalog.models[0].model_dump(mode="json")).deployment.autoscaling_config
    assert again is not None and again.slo is not None and again.slo.class_priority == 0
    with pytest.raises(CatalogError, match="not a class"):
        parse_catalog(
            {
                "edge": {"service_classes": classes},
                "models": [
                    {
                        **entry,
                        "deployment": {
                            "autoscaling_config": {"max_replicas": 3, "slo": {**slo, "service_class": "gold"}}
                        },
                    }
                ],
            }
        )


def test_a_replica_s_own_ttft_histogram_reads_as_vllm_s_does():
    from services.metrics.recent import CumulativeHistogram, RecentQuantile

    histogram, recent = CumulativeHistogram(), RecentQuantile(window_s=10)
    recent.add(histogram.snapshot(), now=0)
    for seconds in [0.05] * 9 + [3.0]:
        histogram.observe(seconds)
    recent.add(histogram.snapshot(), now=5)
    assert 0.04 < recent.quantile(0.5) <= 0.06  # within the bucket that holds it
    assert 2.5 < recent.quantile(0.95) <= 5.0
    assert histogram.snapshot()[float("inf")] == 10
