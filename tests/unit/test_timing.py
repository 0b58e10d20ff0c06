"""The timing constants that processes share (services/core/timing.py) keep their relations: each
receiver trusts what it was told for longer than the sender takes to say it again, each caller gives
up before the process waiting on it does."""

from __future__ import annotations

import pytest
from ray.serve._private import constants as serve_constants

from services.core import timing
from services.core.catalog import CatalogError, parse_catalog


def test_the_hub_keeps_a_replica_through_missed_snapshots():
    assert timing.SNAPSHOT_STALE_S >= 3 * timing.ENGINE_SNAPSHOT_PERIOD_S
    assert timing.SNAPSHOT_STALE_S >= 3 * timing.RECORDS_FLUSH_PERIOD_S


def test_the_router_counts_its_sends_over_several_load_reports():
    assert timing.SENT_WINDOW_S >= 3 * timing.ROUTING_STATS_PERIOD_S


def test_the_ingress_router_answers_before_haproxy_gives_up_on_it():
    assert timing.CHOOSE_TIMEOUT_S < serve_constants.RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_TIMEOUT_S


def test_load_reports_are_asked_for_more_often_than_ray_would():
    assert timing.ROUTING_STATS_PERIOD_S < serve_constants.DEFAULT_REQUEST_ROUTING_STATS_PERIOD_S


def test_readiness_polls_faster_while_loading_and_suspects_expire():
    assert timing.READINESS_POLL_S <= timing.READINESS_POLL_READY_S < timing.SUSPECT_MAX_S


def test_an_old_adapter_snapshot_outlives_every_request_deadline_a_catalog_may_set():
    assert timing.ADAPTER_SNAPSHOT_GRACE_S > timing.MAX_REQUEST_TIMEOUT_S
    models = [{"name": "m", "source": "embedded://smollm2-135m-instruct"}]
    at_most = parse_catalog({"edge": {"request_timeout_s": timing.MAX_REQUEST_TIMEOUT_S}, "models": models})
    assert at_most.edge.request_timeout_s == timing.MAX_REQUEST_TIMEOUT_S
    with pytest.raises(CatalogError, match=r"edge\.request_timeout_s"):
        parse_catalog({"edge": {"request_timeout_s": timing.MAX_REQUEST_TIMEOUT_S + 1}, "models": models})


def test_the_broker_answers_well_within_the_default_deadline():
    default_deadline = parse_catalog({"models": [{"name": "m", "source": "embedded://smollm2-135m-instruct"}]})
    assert timing.BROKER_TIMEOUT_S < default_deadline.edge.request_timeout_s / 10


def test_engine_series_ride_every_nth_snapshot():
    ratio = timing.ENGINE_SERIES_PERIOD_S / timing.ENGINE_SNAPSHOT_PERIOD_S
    assert ratio >= 1 and ratio == round(ratio)
