"""Which engine deployments have a running replica, read from the Serve controller.

One background task refreshes it, so health probes and the request path only read a dict.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ray import serve

logger = logging.getLogger("slmserve.router")


@dataclass
class DeploymentState:
    running_replicas: int = 0
    status: str = "UNKNOWN"


@dataclass
class Readiness:
    app_name: str
    deployment_names: list[str]
    period_s: float = 1.0  # while any model is loading
    ready_period_s: float = 5.0  # once all are up: replica failures also surface on the request path
    states: dict[str, DeploymentState] = field(default_factory=dict)
    _task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def is_ready(self, deployment_name: str) -> bool:
        state = self.states.get(deployment_name)
        return state is not None and state.running_replicas > 0

    def all_ready(self) -> bool:
        return all(self.is_ready(name) for name in self.deployment_names)

    def _read(self) -> dict[str, DeploymentState]:
        application = serve.status().applications.get(self.app_name)
        if application is None:
            return {}
        return {
            name: DeploymentState(
                running_replicas=status.replica_states.get("RUNNING", 0),
                status=str(getattr(status.status, "value", status.status)),
            )
            for name, status in application.deployments.items()
        }

    async def _refresh_forever(self) -> None:
        while True:
            try:
                self.states = await asyncio.to_thread(self._read)
            except Exception:  # the controller may be restarting; keep the last view
                logger.warning("could not read Serve status", exc_info=True)
            await asyncio.sleep(self.ready_period_s if self.all_ready() else self.period_s)
