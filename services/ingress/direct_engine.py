"""vLLM's engine replica as the direct ingress (services/ingress/direct.py)."""

from __future__ import annotations

from services.engine.deployment import EngineDeployment
from services.ingress.direct import DirectIngress


class DirectEngine(DirectIngress, EngineDeployment):
    """Constructed as DirectIngress says: (entry, cache_dir, platform_app, catalog)."""
