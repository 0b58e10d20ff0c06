"""What the Serve controller says about an application's deployments (read by the PlatformIngress's
readiness and the metrics hub alike)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ray import serve

from services.core import ray_compat


@dataclass
class DeploymentState:
    status: str = "UNKNOWN"
    replicas: dict[str, int] = field(default_factory=dict)  # replica state (RUNNING, STARTING, ...) -> count
    target_replicas: int | None = None  # what the autoscaler (or num_replicas) asks for
    message: str = ""  # the controller's word on the status (a DEPLOY_FAILED one carries the traceback)

    @property
    def running_replicas(self) -> int:
        return self.replicas.get("RUNNING", 0)


def read_deployment_states(app_names: str | Iterable[str], *, with_targets: bool = False) -> dict[str, DeploymentState]:
    """The deployments of one application, or of several (whose deployment names the caller knows
    apart: every model's engine deployment has a name of its own). Blocking controller call(s): run
    it off the event loop (asyncio.to_thread). `with_targets` also asks for each deployment's target
    replica count (one more, heavier, controller call)."""
    wanted = {app_names} if isinstance(app_names, str) else set(app_names)
    states = {
        name: DeploymentState(
            status=str(getattr(status.status, "value", status.status)),
            replicas=dict(status.replica_states),
            message=status.message,
        )
        for app_name, application in serve.status().applications.items()
        if app_name in wanted
        for name, status in application.deployments.items()
    }
    if with_targets:
        applications = ray_compat.serve_details().get("applications", {})
        for app_name in wanted:
            for name, deployment in ((applications.get(app_name) or {}).get("deployments") or {}).items():
                if name in states:
                    states[name].target_replicas = deployment.get("target_num_replicas")
    return states
