"""What the Serve controller says about an application's deployments (read by the PlatformIngress's
readiness and the metrics hub alike)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

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
    apart: every model's engine deployment has a name of its own). One blocking controller call: run
    it off the event loop (asyncio.to_thread). `with_targets` also fills in each deployment's target
    replica count.

    It reads the controller's details as a plain dict: `serve.status()` asks for the same details and
    then parses them into pydantic models, which pickles every deployment's request router class
    (about 30 ms of CPU a call, most of the platform's idle CPU when readiness polled with it)."""
    wanted = {app_names} if isinstance(app_names, str) else set(app_names)
    applications = ray_compat.serve_details().get("applications") or {}
    states = {}
    for app_name in wanted:
        for name, deployment in ((applications.get(app_name) or {}).get("deployments") or {}).items():
            replicas = Counter(_text(replica.get("state")) for replica in deployment.get("replicas") or [])
            states[name] = DeploymentState(
                status=_text(deployment.get("status", "UNKNOWN")),
                replicas=dict(replicas),
                target_replicas=deployment.get("target_num_replicas") if with_targets else None,
                message=deployment.get("message") or "",
            )
    return states


def _text(value: object) -> str:
    """Serve's enums (ReplicaState, DeploymentStatus) as the strings they stand for."""
    return str(getattr(value, "value", value))
