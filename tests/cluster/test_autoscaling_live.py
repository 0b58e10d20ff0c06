"""Autoscaling end to end on a local multi-node Ray (issue 18): Ray's own autoscaler with its fake
multi-node provider adds worker nodes of the catalog's node groups (`loadtests/autoscaling-cluster.yaml`,
the block the Helm chart renders into worker groups) for replicas Serve cannot place, the SLO policy
adds a replica under a load step and takes it away after, the replica taken away finishes the
streams it holds, and the node it leaves idle is removed.

The scenario runs once, in a process of its own (`python -m loadtests.autoscaling_cluster`: it is a
Ray driver of its own cluster, and this test process may be the session application's driver), and
each test reads one part of its timeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT_S = 900

pytestmark = pytest.mark.live  # it starts a Ray cluster and engines of its own


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cluster") / "scenario.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "SLMSERVE_API_KEYS"))}
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.autoscaling_cluster", "--json", str(out)],
        cwd=ROOT,
        env=env | {"PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stderr[-6000:]
    scenario: dict[str, Any] = json.loads(out.read_text())
    return scenario


def test_a_pending_replica_gets_a_node_of_the_group_that_fits(scenario: dict[str, Any]):
    figures = scenario["figures"]
    assert figures["first_node_s"] is not None  # the head has no GPU: the first replica waited for a node
    # One GPU per replica: gpu-1x nodes, never the 2-GPU group's.
    assert figures["node_types_launched"] == ["gpu-1x", "gpu-1x"]
    assert figures["replica_node_types"] == ["gpu-1x"]


def test_a_load_step_adds_one_replica_on_a_new_node_and_it_serves(scenario: dict[str, Any]):
    figures = scenario["figures"]
    assert figures["scale_up_decision_s"] is not None and figures["second_node_s"] is not None
    assert figures["second_replica_serving_s"] is not None
    assert figures["replicas_that_served"] == 2
    assert (figures["scale_ups"], figures["scale_downs"]) == (1, 1)  # no flapping


def test_scale_down_drains_the_removed_replica_and_nothing_fails(scenario: dict[str, Any]):
    figures = scenario["figures"]
    assert figures["scale_down_s"] is not None
    assert len(figures["removed_replicas"]) == 1
    assert figures["streams_in_flight_on_removed_replica"] >= 1  # it was serving when it was told to go
    assert figures["streams_on_removed_replica_failed"] == 0  # and finished what it was serving
    assert figures["streams_started_on_removed_replica_after_decision"] == 0  # and took nothing new
    assert figures["requests"] > 0 and figures["failed"] == 0


def test_the_node_left_idle_is_removed(scenario: dict[str, Any]):
    figures = scenario["figures"]
    assert figures["idle_node_removed_s"] is not None
    last = scenario["timeline"]["ticks"][-1]
    assert sum(last["nodes"].values()) == 1 and last["running"] == 1
