"""What the Serve controller says about an application's deployments (read by the router's
readiness and the metrics hub alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray import serve


@dataclass
class DeploymentState:
    status: str = "UNKNOWN"
    replicas: dict[str, int] = field(default_factory=dict)  # replica state (RUNNING, STARTING, ...) -> count

    @property
    def running_replicas(self) -> int:
        return self.replicas.get("RUNNING", 0)


def read_deployment_states(app_name: str) -> dict[str, DeploymentState]:
    """Blocking controller call: run it off the event loop (asyncio.to_thread)."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return {}
    return {
        name: DeploymentState(status=str(getattr(status.status, "value", status.status)),
                              replicas=dict(status.replica_states))
        for name, status in application.deployments.items()
    }
