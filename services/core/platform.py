"""Deployments reached across applications, by name (direct mode): the platform's hub and broker
from every model's application, each model's engine from the platform, where Serve's `.bind()`
cannot hand a handle over."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from services.core.ray_compat import handle_by_name

METRICS_HUB = "MetricsHub"
LIMIT_BROKER = "LimitBroker"


def handle(deployment: str, app: str) -> DeploymentHandle:
    """A handle to a deployment of another application (the platform's, or a model's). Not checked
    at once: the applications are deployed together (serveConfigV2) or one after another, and a
    handle resolves its replicas when first used."""
    return handle_by_name(deployment, app)
