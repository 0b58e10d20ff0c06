"""Which engine deployments can take requests.

In direct mode the engine replica is the HTTP server and only answers once its engine has loaded,
so it is ready by construction (`SelfReadiness`). In routed mode, which deployments have a running
replica is read from the Serve controller (`ControllerReadiness`).

One background task refreshes it, so health probes and the request path only read a dict. The
router also reports replica failures it sees itself (a broken stream, a dead actor): until the
controller has counted that failure, the model has one running replica fewer than the controller
says. A model whose only replica died is down at once, so new requests get a fast 503 instead of
queueing for a replica that no longer exists; a model with others keeps serving on them (Serve's
router stops choosing a replica it found unavailable).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from services.core.serve_context import background_task
from services.core.serve_status import DeploymentState, read_deployment_states
from services.core.timing import READINESS_POLL_READY_S, READINESS_POLL_S, SUSPECT_MAX_S

logger = logging.getLogger("slmserve.edge")
ModelState = Literal["running", "asleep", "starting", "zero", "unavailable"]


@dataclass
class _Suspect:
    until: float
    running_when_seen: int  # the controller's count of running replicas when the failure was seen
    counted: bool = False  # the controller's view has caught up with the failure


class SelfReadiness:
    """Direct mode: this replica serves its own, loaded engine. A dead engine core fails Serve's
    health check, which replaces the replica; nothing to track here."""

    def start(self) -> None:
        pass

    async def refresh(self) -> None:
        pass

    def is_ready(self, deployment_name: str) -> bool:
        return True

    def state(self, deployment_name: str) -> ModelState:
        return "running"

    def mark_failed(self, deployment_name: str) -> None:
        pass


@dataclass
class ControllerReadiness:
    deployments: dict[str, str]  # engine deployment name -> its application
    period_s: float = READINESS_POLL_S
    ready_period_s: float = READINESS_POLL_READY_S
    states: dict[str, DeploymentState] = field(default_factory=dict)
    _suspects: dict[str, _Suspect] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = background_task(self._refresh_forever())

    def is_ready(self, deployment_name: str) -> bool:
        state = self.states.get(deployment_name)
        running = state.running_replicas if state is not None else 0
        suspect = self._suspects.get(deployment_name)
        if suspect is not None and not suspect.counted:
            running -= 1
        return running > 0

    def state(self, deployment_name: str) -> ModelState:
        """running (a replica serves), starting (one is on its way), unavailable (none, and Serve says the
        deployment failed), or zero (none: a model scaled to zero, its last replica perhaps still stopping)."""
        if self.is_ready(deployment_name):
            return "running"
        state = self.states.get(deployment_name, DeploymentState())
        if any(state.replicas.get(name, 0) for name in ("STARTING", "UPDATING", "RECOVERING")):
            return "starting"
        return "unavailable" if state.status in ("UNHEALTHY", "DEPLOY_FAILED", "UNKNOWN") else "zero"

    def all_ready(self) -> bool:
        return all(self.is_ready(name) for name in self.deployments)

    def mark_failed(self, deployment_name: str) -> None:
        if deployment_name not in self._suspects:
            logger.warning(
                "replica failure seen for %s: one running replica fewer until Serve counts it", deployment_name
            )
            state = self.states.get(deployment_name, DeploymentState())
            self._suspects[deployment_name] = _Suspect(time.monotonic() + SUSPECT_MAX_S, state.running_replicas)

    def _update_suspects(self) -> None:
        now = time.monotonic()
        for name, suspect in list(self._suspects.items()):
            state = self.states.get(name, DeploymentState())
            healthy = state.running_replicas > 0 and state.status == "HEALTHY"
            fewer = state.running_replicas < suspect.running_when_seen
            suspect.counted = suspect.counted or fewer or not healthy
            if (suspect.counted and healthy) or now > suspect.until:
                del self._suspects[name]

    async def refresh(self) -> None:
        """One read of Serve's view of the engines."""
        try:
            self.states = await asyncio.to_thread(read_deployment_states, set(self.deployments.values()))
            self._update_suspects()
        except Exception:  # the controller may be restarting; keep the last view
            logger.warning("could not read Serve status", exc_info=True)

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.ready_period_s if self.all_ready() else self.period_s)
