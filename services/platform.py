"""The platform application's shared deployments, by name: what every model's application
(direct mode) reaches across applications, where Serve's `.bind()` cannot hand a handle over."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

METRICS_HUB = "MetricsHub"
LIMIT_BROKER = "LimitBroker"


def handle(deployment: str, platform_app: str) -> DeploymentHandle:
    """A handle to one of the platform's deployments. Not checked at once: the applications are
    deployed together (serveConfigV2) or one after another, and a handle resolves its replicas
    when first used."""
    return serve.get_deployment_handle(deployment, platform_app, _check_exists=False)
