"""What the Serve controller says about an application's deployments (read by the router's
readiness and the metrics hub alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray import serve


@dataclass
class DeploymentState:
    status: str = "UNKNOWN"
    replicas: dict[str, int] = field(default_factory=dict)  # replica state (RUNNING, STARTING, ...) -> count
    target_replicas: int | None = None  # what the autoscaler (or num_replicas) asks for
    message: str = ""  # the controller's word on the status (a DEPLOY_FAILED one carries the traceback)

    @property
    def running_replicas(self) -> int:
        return self.replicas.get("RUNNING", 0)


def read_deployment_states(app_name: str, *, with_targets: bool = False) -> dict[str, DeploymentState]:
    """Blocking controller call(s): run it off the event loop (asyncio.to_thread). `with_targets`
    also asks for each deployment's target replica count (one more, heavier, controller call)."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return {}
    states = {
        name: DeploymentState(
            status=str(getattr(status.status, "value", status.status)),
            replicas=dict(status.replica_states),
            message=status.message,
        )
        for name, status in application.deployments.items()
    }
    if with_targets:
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details().get("applications", {}).get(app_name, {})
        for name, deployment in (details.get("deployments") or {}).items():
            if name in states:
                states[name].target_replicas = deployment.get("target_num_replicas")
    return states
