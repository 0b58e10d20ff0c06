"""How the edge reaches a model's engine: in its own process (direct mode: the engine replica is the
HTTP server) or through one Serve handle per engine deployment (routed mode: a multi-model router).

Both give the edge the same `EngineStream` (services/engine/protocol.py): the head first, then SSE
frames and the outcome, and a `cancel` that makes the engine abort the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from services.core.timing import ENGINE_QUERY_TIMEOUT_S
from services.engine.protocol import EngineCall, Head, Outcome
from services.routing.session import with_session

logger = logging.getLogger("slmserve.edge")

# What a dead or unreachable replica looks like to a caller (as opposed to an exception raised by
# engine code, which is a bug to surface, not an outage).
REPLICA_GONE = (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)


class EngineStream(Protocol):
    async def head(self) -> Head: ...
    def __aiter__(self) -> AsyncIterator[str | Outcome]: ...
    def cancel(self) -> None: ...


class Engine(Protocol):
    def open(self, call: EngineCall) -> EngineStream: ...
    def ready(self) -> bool: ...
    async def request_schemas(self) -> dict[str, dict[str, Any]]: ...
    async def adapter_names(self, max_age_s: float) -> list[str]: ...
    async def profile(self) -> dict[str, Any] | None: ...


class LocalStream:
    """The engine's own async generator, iterated in this process: nothing is serialised."""

    def __init__(self, frames: AsyncIterator[Any]) -> None:
        self._frames = frames

    async def head(self) -> Head:
        head = await anext(self._frames)
        assert isinstance(head, Head)
        return head

    def __aiter__(self) -> AsyncIterator[str | Outcome]:
        return self._frames

    def cancel(self) -> None:
        # Closing the generator closes vLLM's, which aborts the request in the engine. A stream that
        # already ended closes as a no-op.
        aclose = getattr(self._frames, "aclose", None)
        if aclose is not None:
            asyncio.get_running_loop().create_task(aclose())


class LocalEngine:
    """An engine in this process (`services.engine.deployment.EngineDeployment`)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def open(self, call: EngineCall) -> LocalStream:
        # the replica was chosen already (HAProxy, or the ReplicaPicker)
        return LocalStream(self.engine.stream(call))

    def ready(self) -> bool:
        return True  # an engine replica only answers HTTP once its engine has loaded

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        schemas: dict[str, dict[str, Any]] = await self.engine.request_schemas()
        return schemas

    async def adapter_names(self, max_age_s: float) -> list[str]:
        names: list[str] = await self.engine.adapter_names()  # this replica's own registry: always current
        return names

    async def profile(self) -> dict[str, Any] | None:
        info: dict[str, Any] | None = self.engine.profile_info()
        return info


class RemoteStream:
    def __init__(self, response: DeploymentResponseGenerator) -> None:
        self._response = response

    async def head(self) -> Head:
        head = await self._response.__anext__()
        assert isinstance(head, Head)
        return head

    def __aiter__(self) -> AsyncIterator[str | Outcome]:
        items: AsyncIterator[str | Outcome] = self._response
        return items

    def cancel(self) -> None:
        self._response.cancel()  # the engine replica aborts the request; a no-op once it ended


class RemoteEngine:
    """An engine deployment behind one streaming handle, made once and reused for every request.

    `ready` is false until the handle's own router has heard which replicas exist: a request sent
    before that waits in the handle for Serve's next long-poll update (up to 30 s), so the edge
    answers 503 instead of sending it.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle.options(stream=True)  # initialises the handle's router now, once
        self._unary = handle
        self._adapters: list[str] = []
        self._adapters_at = float("-inf")

    def open(self, call: EngineCall) -> RemoteStream:
        # The engine deployment's request router (services/routing/policies.py) sees the call's body
        # and session id when it picks the replica.
        return RemoteStream(with_session(self.handle, call.session_id).generate.remote(call))

    def ready(self) -> bool:
        return bool(self.handle.running_replicas_populated())

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        schemas: dict[str, dict[str, Any]] = await self._unary.request_schemas.remote()
        return schemas

    async def adapter_names(self, max_age_s: float) -> list[str]:
        """The adapters an engine replica serves, asked again once the last answer is older than
        `max_age_s` (the replicas share one adapters_dir, so any replica answers for all)."""
        if time.monotonic() - self._adapters_at > max_age_s and self.ready():
            self._adapters_at = time.monotonic()  # one question at a time, even when it fails
            try:
                async with asyncio.timeout(ENGINE_QUERY_TIMEOUT_S):
                    self._adapters = await self._unary.adapter_names.remote()
            except (TimeoutError, *REPLICA_GONE):
                logger.warning("could not ask %s for its adapters; using the last answer", self._unary.deployment_name)
        return self._adapters

    async def profile(self) -> dict[str, Any] | None:
        """The engine profile of one replica (replicas of a model on like nodes pick the same one)."""
        if not self.ready():
            return None
        try:
            async with asyncio.timeout(ENGINE_QUERY_TIMEOUT_S):
                info: dict[str, Any] = await self._unary.info.remote()
                profile: dict[str, Any] | None = info["profile"]
                return profile
        except (TimeoutError, *REPLICA_GONE):
            return None
