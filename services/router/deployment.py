"""The router deployment: the HTTP ingress of a multi-model catalog (routed mode).

Ray Serve 2.60's HAProxy forwards a request straight to a replica of one deployment per
application, so one base URL for several models needs a replica that reads `model` and calls that
model's engine deployment: this one. Each engine is reached through one streaming handle made at
start and reused (services/edge/engines.py). A single-model catalog needs none of this: its engine
replicas serve HTTP themselves (direct mode, services/engine/deployment.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from services.catalog import Catalog
from services.edge.app import build_app
from services.edge.edge import Edge
from services.edge.engines import Engine, RemoteEngine
from services.edge.readiness import ControllerReadiness
from services.metrics.records import RecordBuffer
from services.router import decisions


class Router:
    """Wrapped by `serve.ingress()` and `serve.deployment` in services.app."""

    def __init__(
        self,
        catalog: dict[str, Any],
        app_name: str,
        metrics_hub: DeploymentHandle,
        limit_broker: DeploymentHandle | None,
        *engines: DeploymentHandle,
    ) -> None:
        parsed = Catalog.model_validate(catalog)
        handles: dict[str, Engine] = {
            entry.name: RemoteEngine(handle) for entry, handle in zip(parsed.models, engines, strict=True)
        }
        readiness = ControllerReadiness(app_name, [entry.deployment_name for entry in parsed.models])
        records = RecordBuffer(metrics_hub, collectors=(decisions.drain,))
        self.edge = Edge(parsed, handles, records, readiness, served_by="router", limit_broker=limit_broker)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.edge)
