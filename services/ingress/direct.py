"""The direct ingress: an engine replica that is also the HTTP server. HAProxy forwards each request
straight to it; the edge (services/edge) runs in this process and iterates the engine's stream
in-process, so tokens cross one Python process, as with bare `vllm serve`.

`DirectIngress` is the edge's half, vLLM-free, mixed into the engine class that hosts the model:
`DirectEngine` (vLLM's, services/ingress/direct_engine.py) or the scale runs' stand-in
(loadtests/standin), which must start without loading vLLM."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray import serve

from services.core import platform
from services.core.catalog import Catalog, ModelEntry
from services.edge.app import build_app
from services.edge.edge import Edge
from services.edge.limits import has_limits
from services.edge.readiness import SelfReadiness
from services.engine.interface import LocalEngine
from services.engine.protocol import EngineCall, StreamItem
from services.metrics.records import RecordBuffer
from services.routing import decisions
from services.routing.arrivals import ArrivalCounter, Arrivals


class DirectIngress:
    """Mixed in before an engine class (one with `entry`, `metrics_hub` and `stream`). Wrapped by
    `serve.ingress()` in services.app, which serves the app `__serve_build_asgi_app__` returns once
    the engine has loaded."""

    entry: ModelEntry
    metrics_hub: Any

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, entry: dict[str, Any], cache_dir: str, platform_app: str, catalog: dict[str, Any]
    ) -> None:
        # the engine class's constructor: (entry, cache_dir, metrics_hub)
        await super().__init__(entry, cache_dir, platform.handle(platform.METRICS_HUB, platform_app))  # type: ignore[call-arg,misc]
        self.catalog = Catalog.model_validate(catalog)
        self.limit_broker = platform.handle(platform.LIMIT_BROKER, platform_app) if has_limits(self.catalog) else None
        self.arrivals = Arrivals()  # the requests ReplicaPickers placed here (services/routing/arrivals.py)

    def record_routing_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = super().record_routing_stats()  # type: ignore[misc]  # the engine's
        # A request counted as arrived leaves the picker's book of sends, so it must be in `ongoing`
        # from then on, before its engine has it too.
        ongoing = max(int(stats["ongoing"]), self.arrivals.holding)
        return {**stats, "ongoing": ongoing, "arrived": dict(self.arrivals.counts)}

    def stream(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        # With one fixed replica HAProxy asks no ReplicaPicker: the choice is counted here, so the
        # routing metric (and its dashboard panel) covers every model.
        if not self.entry.has_replica_choice:
            decisions.count(self.entry.deployment_name, self.entry.routing.policy, "single_replica")
        stream: AsyncGenerator[StreamItem, None] = super().stream(call)  # type: ignore[misc]  # the engine's
        return stream

    async def __serve_build_asgi_app__(self) -> Any:
        edge = Edge(
            self.catalog,
            {self.entry.name: LocalEngine(self)},
            RecordBuffer(self.metrics_hub, collectors=(decisions.drain,)),
            SelfReadiness(),
            served_by="engine",
            replica=serve.get_replica_context().replica_id.unique_id,
            limit_broker=self.limit_broker,
        )
        app = build_app(edge)
        app.add_middleware(ArrivalCounter, arrivals=self.arrivals)
        return app
