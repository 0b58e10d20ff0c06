"""Build the Ray Serve applications of a catalog (services/core/layout.py says which, and where).

- direct (the default): per model, an application whose engine deployment is the HTTP ingress,
  with the `ReplicaPicker` as its ingress request router where it has a replica choice, so HAProxy
  sends each request straight to an engine replica; plus the platform application at `/`: the
  `MetricsHub`, the `LimitBroker` (when the catalog sets limits) and a `PlatformIngress` that answers the
  control routes and every request HAProxy could not place by its `model`, through handles.
- routed: one application whose `PlatformIngress` is the ingress and calls each model's engine deployment
  through a handle.

This is also the import path KubeRay's serveConfigV2 names (`services.app:build_app`), with the
catalog handed in as application args (and `model` for a model's application), so clusters and
local runs build the same graphs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from services.core import ray_compat
from services.core.catalog import Catalog, DeploymentOptions, ModelEntry, parse_catalog
from services.core.layout import Layout, layout
from services.core.platform import LIMIT_BROKER, METRICS_HUB
from services.core.settings import Settings
from services.core.timing import BROKER_HEALTH_CHECK_S, ROUTING_STATS_PERIOD_S

# Ray Serve runs user code and its outgoing-request router on separate threads/loops by default;
# every streamed token then crosses threads twice per hop. Our deployments are fully async, so they
# run both on the replica's main loop (Ray's own "throughput optimized" settings), set per
# deployment so that nothing else on the cluster changes.
FAST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _serve_options(deployment: DeploymentOptions, env: dict[str, str]) -> dict[str, Any]:
    options = deployment.to_serve_options()
    options["ray_actor_options"]["runtime_env"] = {"env_vars": {**FAST_PATH_ENV, **env}}
    return options


def _request_router(entry: ModelEntry) -> dict[str, Any]:
    if entry.routing.policy == "power-of-two" or not entry.has_replica_choice:  # Ray Serve's default
        return {}
    from ray.serve.config import RequestRouterConfig

    return {
        "request_router_config": RequestRouterConfig(
            request_router_class="services.routing.policies.AffinityPolicy",
            request_router_kwargs={
                **entry.routing.router_kwargs(),
                **({"base_names": entry.names} if entry.adapter_affinity else {}),
            },
            request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
            request_routing_stats_timeout_s=ROUTING_STATS_PERIOD_S,
        )
    }


def _engine_deployment(entry: ModelEntry, cls: type) -> Any:
    return serve.deployment(cls).options(
        name=entry.deployment_name, **_serve_options(entry.deployment, entry.env), **_request_router(entry)
    )


# The platform's one-replica actors (the limit broker, the metrics hub) live on the head node, whose
# loss ends the cluster anyway: with no CPUs asked, Ray would place them anywhere, and a GPU node lost
# would take them along (seen in loadtests/chaos.py: every limited request then failed closed until
# Serve replaced the broker). Ray's own state actors pin themselves the same way.
ON_THE_HEAD_NODE = {"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
# The hub's exposition is text format 0.0.4, where a `_created` sample is one more gauge series per
# counter and histogram child that Prometheus stores and nothing reads (it uses creation times only
# from OpenMetrics or protobuf scrapes): a sixth of the hub's text and of its render time per scrape.
# (The engines' vLLM series pass through as vLLM rendered them.)
HUB_ENV = {"PROMETHEUS_DISABLE_CREATED_SERIES": "True"}
# Their callers are the platform's own replicas or HAProxy, on every request (the broker, the
# ReplicaPicker) or every second per engine replica (the hub): Serve's access-log line per call would
# drown the replica logs at scale, and was a tenth of the picker's CPU per decision.
QUIET = {"enable_access_log": False}


def _limit_broker(catalog: Catalog) -> Application | None:
    """The cluster-wide limits, where the catalog sets any (services/edge/limits.py)."""
    from services.edge.limits import LimitBroker, has_limits

    if not has_limits(catalog):
        return None
    return (
        serve.deployment(LimitBroker)
        .options(
            name=LIMIT_BROKER,
            num_replicas=1,
            max_ongoing_requests=4096,
            health_check_period_s=BROKER_HEALTH_CHECK_S,  # limited requests wait for its restart
            ray_actor_options=ON_THE_HEAD_NODE,
            logging_config=QUIET,
        )
        .bind(catalog.model_dump(mode="json"))
    )


def _model_application(
    catalog: Catalog, entry: ModelEntry, platform_app: str, cache_dir: str, direct_engine: type | None
) -> Application:
    from services.ingress.replica_picker import ReplicaPicker

    if direct_engine is None:
        from services.ingress.direct_engine import DirectEngine as direct_engine
    engine = _engine_deployment(entry, serve.ingress()(direct_engine)).bind(
        entry.model_dump(mode="json"), cache_dir, platform_app, catalog.model_dump(mode="json")
    )
    # One fixed replica leaves nothing to choose: HAProxy forwards to it without asking anyone. And
    # without HAProxy, Serve's proxy actor routes to the engine replicas itself.
    if not entry.has_replica_choice or not ray_compat.haproxy_enabled():
        return engine
    router = (
        serve.deployment(serve.ingress()(ReplicaPicker))
        .options(name="ReplicaPicker", logging_config=QUIET, **_serve_options(catalog.edge.deployment, {}))
        .bind(engine, platform_app, catalog.edge.session_header)
    )
    return ray_compat.with_ingress_request_router(engine, router)


def _metrics_hub(catalog: Catalog, plan: Layout) -> Application:
    from services.metrics.hub import MetricsHub

    return (
        serve.deployment(MetricsHub)
        .options(
            name=METRICS_HUB,
            num_replicas=1,
            max_ongoing_requests=256,
            ray_actor_options={**ON_THE_HEAD_NODE, "runtime_env": {"env_vars": HUB_ENV}},
            logging_config=QUIET,
        )
        .bind(plan.engine_deployments(catalog), catalog.tenants)
    )


def _platform_application(catalog: Catalog, plan: Layout, cache_dir: str) -> Application:
    """The hub, the broker and the PlatformIngress; in routed mode the engines too, bound to the PlatformIngress."""
    from services.engine.deployment import EngineDeployment
    from services.ingress.platform_ingress import PlatformIngress

    hub = _metrics_hub(catalog, plan)
    engines = (
        [
            _engine_deployment(entry, EngineDeployment).bind(entry.model_dump(mode="json"), cache_dir, hub)
            for entry in catalog.models
        ]
        if plan.data_plane == "routed"
        else []
    )
    router = serve.deployment(serve.ingress()(PlatformIngress)).options(
        name="PlatformIngress", **_serve_options(catalog.edge.deployment, {})
    )
    return router.bind(catalog.model_dump(mode="json"), plan.platform_app, hub, _limit_broker(catalog), *engines)


def _with_tracing(catalog: Catalog) -> Catalog:
    """Tracing resolved once, here (the catalog's endpoint, else the environment's), and given to the
    engines too: vLLM exports its engine spans over OTLP/HTTP to the same collector."""
    from services.edge.tracing import traces_endpoint

    endpoint = traces_endpoint(catalog.tracing)
    if endpoint is None:
        return catalog
    engine_env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "vllm"}
    models = [
        entry.model_copy(
            update={
                "engine_args": {"otlp_traces_endpoint": endpoint, **entry.engine_args},
                "env": {**engine_env, **entry.env},
            }
        )
        for entry in catalog.models
    ]
    return catalog.model_copy(
        update={"models": models, "tracing": catalog.tracing.model_copy(update={"otlp_traces_endpoint": endpoint})}
    )


@dataclass(frozen=True)
class ServeApp:
    name: str
    route_prefix: str
    application: Application


def build_applications(
    catalog: Catalog, *, app_name: str, cache_dir: Path, direct_engine: type | None = None
) -> list[ServeApp]:
    """The platform application first, then one per model (direct mode). `direct_engine` is the class
    that hosts each model in direct mode: vLLM's DirectEngine unless a scale run passes its stand-in
    (loadtests/standin), which no catalog can name."""
    catalog = _with_tracing(catalog)
    plan = layout(catalog, app_name)
    apps = [ServeApp(plan.platform_app, "/", _platform_application(catalog, plan, str(cache_dir)))]
    for entry in catalog.models:
        if (model_app := plan.model_apps.get(entry.name)) is not None:
            application = _model_application(catalog, entry, plan.platform_app, str(cache_dir), direct_engine)
            apps.append(ServeApp(model_app.app_name, model_app.route_prefix, application))
    return apps


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application-builder entry point: `args` is `{"catalog": {...}}` from serveConfigV2,
    plus `"model": NAME` for that model's application (direct mode); without it, the platform's."""
    settings = Settings()
    catalog = parse_catalog(args.get("catalog"), "serveConfigV2 args.catalog")
    cache_dir = Path(args.get("cache_dir") or os.environ.get("SLMSERVE_CACHE_DIR") or settings.cache_dir)
    apps = build_applications(catalog, app_name=args.get("app_name", settings.app_name), cache_dir=cache_dir)
    model = args.get("model")
    if model is None:
        return apps[0].application
    entry = catalog.resolve(model)
    wanted = layout(catalog, apps[0].name).model_apps.get(entry.name) if entry is not None else None
    if wanted is None:
        raise ValueError(f"serveConfigV2 args.model {model!r}: no model application of that name in the catalog")
    return next(app.application for app in apps if app.name == wanted.app_name)
