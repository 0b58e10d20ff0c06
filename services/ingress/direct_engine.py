"""vLLM's engine replica as the direct ingress (services/ingress/direct.py)."""

from __future__ import annotations

from typing import Any

from services.core import platform
from services.engine.deployment import EngineDeployment
from services.ingress.direct import DirectIngress


class DirectEngine(DirectIngress, EngineDeployment):
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, entry: dict[str, Any], cache_dir: str, platform_app: str, catalog: dict[str, Any]
    ) -> None:
        await super().__init__(entry, cache_dir, platform.handle(platform.METRICS_HUB, platform_app))
        self._join_platform(platform_app, catalog)
