"""Build the Ray Serve application from a catalog: one engine deployment per model, one router.

This is also the import path KubeRay's serveConfigV2 names (`services.app:build_app`), with the
catalog handed in as application args, so clusters and local runs build the same graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from services.catalog import Catalog, DeploymentOptions, parse_catalog
from services.settings import Settings

# Ray Serve runs user code and its outgoing-request router on separate threads/loops by default;
# every streamed token then crosses threads twice per hop. Our deployments are fully async, so they
# run both on the replica's main loop (Ray's own "throughput optimized" settings), set per
# deployment so that nothing else on the cluster changes.
FAST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _serve_options(deployment: DeploymentOptions, env: dict[str, str]) -> dict[str, Any]:
    options = deployment.to_serve_options()
    options["ray_actor_options"]["runtime_env"] = {"env_vars": {**FAST_PATH_ENV, **env}}
    return options


def _engine_application(entry: Any, cache_dir: str, metrics_hub: Application) -> Application:
    from services.engine.deployment import EngineDeployment

    options = _serve_options(entry.deployment, entry.env)
    deployment = serve.deployment(EngineDeployment).options(name=entry.deployment_name, **options)
    return deployment.bind(entry.model_dump(mode="json"), cache_dir, metrics_hub)


def build_application(catalog: Catalog, *, app_name: str, cache_dir: Path) -> Application:
    from services.metrics.hub import MetricsHub
    from services.router.app import Router

    hub = serve.deployment(MetricsHub).options(
        name="MetricsHub", num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0}
    ).bind(app_name, {entry.name: entry.deployment_name for entry in catalog.models})
    engines = [_engine_application(entry, str(cache_dir), hub) for entry in catalog.models]
    router = serve.deployment(Router).options(name="Router", **_serve_options(catalog.router.deployment, {}))
    return router.bind(catalog.model_dump(mode="json"), app_name, hub, *engines)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application-builder entry point: `args` is `{"catalog": {...}}` from serveConfigV2."""
    settings = Settings()
    catalog = parse_catalog(args.get("catalog"), "serveConfigV2 args.catalog")
    cache_dir = Path(args.get("cache_dir") or os.environ.get("SLMSERVE_CACHE_DIR") or settings.cache_dir)
    return build_application(catalog, app_name=args.get("app_name", settings.app_name), cache_dir=cache_dir)
