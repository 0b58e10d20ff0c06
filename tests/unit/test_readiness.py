"""Routed-mode readiness (services/edge/readiness.py): the controller's view, corrected by replica
failures the router sees before the controller does. A model whose only replica died answers 503 at
once; a model with other replicas keeps serving on them (seen in `loadtests.chaos --data-plane
routed`: a worker node lost with one of two replicas used to turn every request into a 503 until the
node came back)."""

from __future__ import annotations

from services.core.serve_status import DeploymentState
from services.edge.readiness import ControllerReadiness

ENGINE = "engine-m"


def controller_says(readiness: ControllerReadiness, running: int, status: str = "HEALTHY") -> None:
    readiness.states = {ENGINE: DeploymentState(status=status, replicas={"RUNNING": running} if running else {})}
    readiness._update_suspects()  # what each refresh does after reading the controller


def test_a_lost_only_replica_takes_the_model_down_until_serve_replaces_it():
    readiness = ControllerReadiness({ENGINE: "app"})
    controller_says(readiness, 1)
    assert readiness.is_ready(ENGINE)
    readiness.mark_failed(ENGINE)
    assert not readiness.is_ready(ENGINE)  # before the controller has noticed
    controller_says(readiness, 1)
    assert not readiness.is_ready(ENGINE)  # the controller still counts the dead replica
    controller_says(readiness, 0, "UNHEALTHY")
    assert not readiness.is_ready(ENGINE)
    controller_says(readiness, 1)  # the replacement runs
    assert readiness.is_ready(ENGINE) and readiness.all_ready()


def test_a_lost_replica_of_two_leaves_the_model_serving():
    readiness = ControllerReadiness({ENGINE: "app"})
    controller_says(readiness, 2)
    readiness.mark_failed(ENGINE)
    assert readiness.is_ready(ENGINE)  # one left, before the controller has noticed
    controller_says(readiness, 1, "UNHEALTHY")  # noticed; no room for a replacement yet
    assert readiness.is_ready(ENGINE)
    controller_says(readiness, 1, "UPDATING")
    assert readiness.is_ready(ENGINE)
    controller_says(readiness, 2)
    assert readiness.is_ready(ENGINE)


def test_a_model_whose_replicas_all_went_is_down():
    readiness = ControllerReadiness({ENGINE: "app"})
    controller_says(readiness, 2)
    readiness.mark_failed(ENGINE)
    readiness.mark_failed(ENGINE)  # the second replica too: still one failure the controller lacks
    controller_says(readiness, 0, "UNHEALTHY")
    assert not readiness.is_ready(ENGINE)
    controller_says(readiness, 2)
    assert readiness.is_ready(ENGINE)


def test_a_model_the_controller_does_not_know_is_not_ready():
    readiness = ControllerReadiness({ENGINE: "app"})
    assert not readiness.is_ready(ENGINE)
    readiness.mark_failed(ENGINE)
    assert not readiness.is_ready(ENGINE)


def test_a_model_s_state_says_running_starting_zero_or_unavailable():
    readiness = ControllerReadiness({ENGINE: "app"})
    seen = []
    for status, replicas in (
        ("HEALTHY", {}),  # scaled to zero: none asked for
        ("DOWNSCALING", {"STOPPING": 1}),  # going to zero (a fresh-clone run saw this as unavailable)
        ("UPSCALING", {"STARTING": 1}),  # a held request started one
        ("HEALTHY", {"RUNNING": 1}),
        ("UNHEALTHY", {}),  # its only replica died
    ):
        readiness.states = {ENGINE: DeploymentState(status=status, replicas=replicas)}
        seen.append(readiness.state(ENGINE))
    assert seen == ["zero", "zero", "starting", "running", "unavailable"]
