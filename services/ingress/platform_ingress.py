"""The router deployment: the ingress of the platform application.

- Direct mode: HAProxy sends each model request straight to its model's application
  (services/haproxy), so this answers the control routes (`/v1/models`, health, `/metrics`,
  metadata, OpenAPI) and every request HAProxy could not place by its `model`: a missing or unknown
  name, malformed JSON, a body larger than HAProxy's buffer. It answers those exactly as an engine
  replica would (400/404 in OpenAI's shape, or the model's answer through a handle), and counts
  them (`slmserve_platform_placed_requests_total`).
- Routed mode: every request comes here, and each engine is called through one streaming handle
  made at start and reused (services/engine/interface.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from services.core import platform
from services.core.catalog import Catalog
from services.core.layout import layout, model_routes
from services.core.logs import show_platform_logs
from services.core.serve_context import background_task
from services.core.timing import INGRESS_WARM_TIMEOUT_S, MODEL_MAP_ATTEMPTS, MODEL_MAP_RETRY_S
from services.edge.app import build_app
from services.edge.edge import Edge
from services.edge.readiness import ControllerReadiness
from services.engine.interface import Engine, RemoteEngine
from services.haproxy.maps import HAProxyMap
from services.haproxy.wrapper import ADAPTERS_MAP, MODELS_MAP
from services.metrics.records import RecordBuffer
from services.routing import decisions

logger = logging.getLogger("slmserve.router")


class PlatformIngress:
    """Wrapped by `serve.ingress()` and `serve.deployment` in services.app."""

    def __init__(
        self,
        catalog: dict[str, Any],
        platform_app: str,
        metrics_hub: DeploymentHandle,
        limit_broker: DeploymentHandle | None,
        *engines: DeploymentHandle,
    ) -> None:
        show_platform_logs()
        parsed = Catalog.model_validate(catalog)
        self.catalog = parsed
        self.plan = layout(parsed, platform_app)
        deployments = self.plan.engine_deployments(parsed)
        if not engines:  # direct mode: each engine is the ingress of its model's application
            engines = tuple(platform.handle(deployment, app) for app, deployment in deployments.values())
        handles: dict[str, Engine] = {
            entry.name: RemoteEngine(handle) for entry, handle in zip(parsed.models, engines, strict=True)
        }
        readiness = ControllerReadiness({deployment: app for app, deployment in deployments.values()})
        records = RecordBuffer(metrics_hub, collectors=(decisions.drain,))
        served_by = "router" if parsed.data_plane == "routed" else "platform"
        self.edge = Edge(parsed, handles, records, readiness, served_by=served_by, limit_broker=limit_broker)
        refresh = [entry.lora.refresh_s for entry in parsed.models if entry.lora is not None]
        self.adapters_period_s = min(refresh) if refresh and self.plan.model_apps else None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        await self.edge.warm(INGRESS_WARM_TIMEOUT_S)  # Serve sends nothing here before this returns
        if self.plan.model_apps and (models := HAProxyMap.on_this_node(MODELS_MAP)) is not None:
            background_task(self._write_model_routes(models))
        if self.adapters_period_s is not None and (routes := HAProxyMap.on_this_node(ADAPTERS_MAP)) is not None:
            background_task(self._keep_adapter_routes(routes, self.adapters_period_s))
        return build_app(self.edge)

    async def _write_model_routes(self, models: HAProxyMap) -> None:
        """This catalog's models in HAProxy's models map: after a catalog is applied to a running
        cluster, a model added is placed direct and one removed no longer is."""
        wanted = model_routes(self.catalog, self.plan.platform_app)
        for _ in range(MODEL_MAP_ATTEMPTS):
            try:
                await asyncio.to_thread(models.apply, wanted)
                return
            except Exception:  # HAProxy restarting: its socket answers again within seconds
                logger.warning("could not update HAProxy's models map; trying again", exc_info=True)
                await asyncio.sleep(MODEL_MAP_RETRY_S)

    async def _keep_adapter_routes(self, routes: HAProxyMap, period_s: float) -> None:
        """Every refresh period: the adapters the engines serve, as HAProxy's adapters map."""
        while True:
            try:
                adapters = await self.edge.adapters()
                wanted = {
                    name: self.plan.model_apps[base.name].route_prefix
                    for name, base in adapters.items()
                    if not base.scales_to_zero  # held by the platform, as the model's own name
                }
                await asyncio.to_thread(routes.apply, wanted)
            except Exception:  # HAProxy restarting, an engine busy: the next period tries again
                logger.warning("could not update HAProxy's adapters map", exc_info=True)
            await asyncio.sleep(period_s)
