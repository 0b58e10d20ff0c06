"""Which Ray Serve applications a catalog becomes, under which names and route prefixes.

- direct (every catalog by default): one application per model, whose engine deployment is the
  HTTP ingress, under an internal route prefix; plus one platform application at `/` holding the
  metrics hub, the limit broker and the platform router (control routes, and every request HAProxy
  could not place by its `model`). HAProxy rewrites a request's path to its model's prefix from
  the body's `model` (services/haproxy), so a token crosses one Python process.
- routed: one application at `/` whose router replica calls every engine through a handle.

Pure: no Ray here, so the CLI, the chart tests and HAProxy's wrapper read the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.core.catalog import Catalog, ModelEntry

# Paths under this prefix are HAProxy's to write: it refuses them from clients (services/haproxy).
INTERNAL_PREFIX = "/_slmserve"
# HAProxy stamps each request with the wall-clock microsecond it read it (services/haproxy/rules.py),
# overwriting any a client sent; the edge reports the time up to its handler as the `ingress` phase.
RECEIVED_HEADER = "X-Slmserve-Received"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


@dataclass(frozen=True)
class ModelApp:
    model: str
    app_name: str
    route_prefix: str
    deployment_name: str


@dataclass(frozen=True)
class Layout:
    platform_app: str
    data_plane: str
    model_apps: dict[str, ModelApp]  # model name -> its application (direct); empty when routed

    def app_of(self, entry: ModelEntry) -> str:
        """The application that holds `entry`'s engine deployment."""
        app = self.model_apps.get(entry.name)
        return app.app_name if app is not None else self.platform_app

    def app_names(self) -> list[str]:
        return [self.platform_app, *(app.app_name for app in self.model_apps.values())]

    def engine_deployments(self, catalog: Catalog) -> dict[str, tuple[str, str]]:
        """model name -> (application, engine deployment name)."""
        return {entry.name: (self.app_of(entry), entry.deployment_name) for entry in catalog.models}


def model_routes(catalog: Catalog, app_name: str) -> dict[str, str]:
    """Every name and alias clients may put in `model` -> its application's route prefix (HAProxy's
    map). Empty when routed: the platform router reads `model` itself. A model that scales to zero is
    left to the platform application too, which holds its requests while a replica starts."""
    apps = layout(catalog, app_name).model_apps
    return {
        name: apps[entry.name].route_prefix
        for entry in catalog.models
        if entry.name in apps and not entry.scales_to_zero
        for name in entry.names
    }


def layout(catalog: Catalog, app_name: str) -> Layout:
    if catalog.data_plane == "routed":
        return Layout(app_name, "routed", {})
    return Layout(
        app_name,
        "direct",
        {
            entry.name: ModelApp(
                entry.name,
                f"{app_name}-{_slug(entry.name)}",
                f"{INTERNAL_PREFIX}/{_slug(entry.name)}",
                entry.deployment_name,
            )
            for entry in catalog.models
        },
    )
