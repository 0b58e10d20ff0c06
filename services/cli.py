"""`slmserve serve | catalog validate | catalog show | profiles list | deploy status | node drain | usage`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from services.core.catalog import Catalog, CatalogError, load_catalog
from services.core.settings import Settings, resolve_catalog_path


def _serve(args: argparse.Namespace) -> int:
    """`slmserve serve`: a private local Ray, Serve and the catalog's application on host:port; prints
    the URL once every model has an engine, exits 1 with Serve's reason when one cannot start, and
    stops Serve and Ray on Ctrl-C."""
    flags = {"catalog": args.catalog, "port": args.port, "host": args.host, "ingress": args.ingress}
    overrides = {key: value for key, value in flags.items() if value is not None}
    settings = Settings(**overrides)
    catalog = load_catalog(resolve_catalog_path(settings.catalog))
    from services import runtime
    from services.engine import cpu_affinity

    base_url = runtime.local_base_url(settings)
    print(f"[slmserve] starting {len(catalog.models)} model(s) from catalog {settings.catalog!r}", flush=True)
    started = time.monotonic()
    stop = {"now": False}
    reload = {"asked": False}

    def _interrupt(*_: object) -> None:
        if stop["now"]:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        stop["now"] = True

    def _reload(*_: object) -> None:
        reload["asked"] = True

    try:
        runtime.start_local(settings, catalog, wait=False)
        cpu_affinity.keep_this_process_on(cpu_affinity.platform_cpus())  # beside the Ray it started
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _reload)
        runtime.wait_until_ready(
            base_url,
            args.ready_timeout,
            progress=True,
            failed=lambda: runtime.deploy_failures(catalog, settings.app_name),
        )
        print(f"[slmserve] ready in {time.monotonic() - started:.0f}s: {base_url}/v1", flush=True)
        for entry in catalog.models:
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"[slmserve]   model {entry.name}{aliases}", flush=True)
        print(f"[slmserve] Ctrl-C to stop; kill -HUP {os.getpid()} applies a changed catalog file", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
            if reload["asked"]:
                reload["asked"] = False
                catalog = _apply_changed_catalog(settings, catalog)
        print("[slmserve] stopping: streams in flight finish first (Ctrl-C again to stop at once)", flush=True)
        runtime.stop_gracefully(settings, catalog)
    except (TimeoutError, runtime.DeployFailed, runtime.LocalStartFailed, KeyboardInterrupt) as error:
        if not isinstance(error, KeyboardInterrupt):
            print(f"[slmserve] {error}", file=sys.stderr, flush=True)
            return 1
    finally:
        print("[slmserve] shutting down", flush=True)
        runtime.shutdown()
    return 0


def _apply_changed_catalog(settings: Settings, running: Catalog) -> Catalog:
    """The catalog file read again and rolled onto the running instance (SIGHUP); an invalid one is
    one line and changes nothing."""
    from services import runtime

    try:
        changed = load_catalog(resolve_catalog_path(settings.catalog))
    except (CatalogError, ValueError, OSError) as error:
        print(f"[slmserve] catalog not applied: {error}", file=sys.stderr, flush=True)
        return running
    if changed == running:
        print("[slmserve] the catalog has not changed", flush=True)
        return running
    gone = runtime.apply_catalog(settings, running, changed)
    names = ", ".join(entry.name for entry in changed.models)
    removed = f"; removing {', '.join(gone)} once its requests finish" if gone else ""
    print(f"[slmserve] applying the changed catalog: {names}, rolled a replica at a time{removed}", flush=True)
    return changed


def _drain(args: argparse.Namespace) -> int:
    from services.drain import drain_node

    return drain_node(args.address, args.node_id, args.deadline_s)


def _validate(args: argparse.Namespace) -> int:
    """`slmserve catalog validate FILE [--engine-args]`: the schema, and with --engine-args each
    entry's engine arguments against the installed vLLM's own parser."""
    catalog = load_catalog(Path(args.file))
    if args.engine_args:
        from services.engine import vllm_compat

        for entry in catalog.models:
            vllm_compat.engine_namespace(entry.source, entry.names, entry.vllm_engine_args())
    names = ", ".join(entry.name for entry in catalog.models)
    print(f"{args.file}: valid ({len(catalog.models)} model(s): {names})")
    return 0


def _show(args: argparse.Namespace) -> int:
    """`slmserve catalog show NAME`: the catalog as validated, defaults filled in, as JSON."""
    catalog = load_catalog(resolve_catalog_path(args.catalog))
    print(json.dumps(catalog.model_dump(mode="json"), indent=2))
    return 0


def _profiles(args: argparse.Namespace) -> int:
    """Each model's profiles against a machine (`--gpu H100x2`, else this one's GPUs), the pick marked."""
    from services.engine.profiles import Hardware, choose, missing

    catalog = load_catalog(resolve_catalog_path(args.catalog))
    hardware = Hardware.parse(args.gpu) if args.gpu else Hardware.detect()
    print(f"hardware: {hardware.describe()}")
    for entry in catalog.models:
        chosen = choose(entry.profiles, hardware, args.pin)
        print(
            f"\n{entry.name}: "
            + (
                f"runs profile {chosen.name}"
                if chosen
                else "runs its own engine_args (no profile fits)"
                if entry.profiles
                else "lists no profiles"
            )
        )
        for profile in entry.profiles:
            problems = missing(profile, hardware)
            mark = "*" if profile is chosen else " "
            fits = "fits" if not problems else "needs " + "; ".join(problems)
            gpus = "/".join(profile.gpus) or "any GPU"
            print(
                f"  {mark} {profile.name:<24} {profile.precision:<5} tp={profile.tensor_parallel_size} "
                f"{profile.optimize:<10} {gpus:<16} {fits}"
            )
    return 0


def _deploy_status(args: argparse.Namespace) -> int:
    """`slmserve deploy status NAME -n NS [--wait]`: the RayService's conditions, applications, replicas
    and pending GPU pods from the Kubernetes API; exit 0 once ready."""
    from kubernetes.client.exceptions import ApiException

    try:
        return _report_status(args)
    except ApiException as error:
        raise ValueError(
            f"Kubernetes API answered {error.status} {error.reason} for rayservice {args.namespace}/{args.name}"
        ) from None


def _report_status(args: argparse.Namespace) -> int:
    from services.deploy.status import api_client, format_report, read_report, wait_for_ready

    client = api_client(args.kubeconfig, args.context)
    if not args.wait:
        report = read_report(client, args.name, args.namespace)
        print(format_report(report))
        return 0 if report.ready else 1
    report = wait_for_ready(
        client,
        args.name,
        args.namespace,
        args.timeout,
        args.poll,
        on_report=lambda r: print(format_report(r) + "\n", flush=True),
    )
    if not report.ready:
        print(f"timed out after {args.timeout:.0f}s", file=sys.stderr)
    return 0 if report.ready else 1


def _usage(args: argparse.Namespace) -> int:
    """`slmserve usage`: tokens and requests per tenant and model (services/usage.py)."""
    from services import usage

    if args.prometheus:
        found = usage.from_prometheus(args.prometheus, args.since)
        print(f"usage over the last {args.since}, from Prometheus at {args.prometheus}")
    else:
        if args.since:
            raise ValueError("--since needs --prometheus (the platform's own counters count since it started)")
        found = usage.from_platform(args.url, args.api_key or os.environ.get("SLMSERVE_API_KEY", ""))
        print(f"usage since the platform at {args.url} started (its own counters)")
    print(usage.table(found))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slmserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a catalog on this machine (local Ray)")
    serve.add_argument("--catalog", help="catalog name (cpu, phi35) or YAML path [SLMSERVE_CATALOG]")
    serve.add_argument("--port", type=int, help="HTTP port [SLMSERVE_PORT, 8000]")
    serve.add_argument("--host", help="bind address [SLMSERVE_HOST, 127.0.0.1]")
    serve.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        help="HAProxy straight to the router, or Serve's proxy actor [SLMSERVE_INGRESS, haproxy]",
    )
    serve.add_argument("--ready-timeout", type=float, default=900, help="seconds to wait for engines")
    serve.set_defaults(func=_serve)
    catalog = commands.add_parser("catalog", help="work with catalog files")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    validate = catalog_commands.add_parser("validate", help="validate a catalog file")
    validate.add_argument("file")
    validate.add_argument(
        "--engine-args", action="store_true", help="also check engine_args names against the installed vLLM"
    )
    validate.set_defaults(func=_validate)
    show = catalog_commands.add_parser("show", help="print a catalog as validated JSON")
    show.add_argument("catalog")
    show.set_defaults(func=_show)
    profiles = commands.add_parser("profiles", help="engine profiles per GPU (services/engine/profiles.py)")
    profiles_commands = profiles.add_subparsers(dest="profiles_command", required=True)
    profiles_list = profiles_commands.add_parser("list", help="each model's profiles and the one a machine runs")
    profiles_list.add_argument("--catalog", default="phi35", help="catalog name or YAML path")
    profiles_list.add_argument(
        "--gpu", help="the GPUs one engine replica gets, e.g. H100x2, L4, cpu (default: what this machine has)"
    )
    profiles_list.add_argument("--pin", help="as SLMSERVE_PROFILE: check that this profile can run there")
    profiles_list.set_defaults(func=_profiles)
    node = commands.add_parser("node", help="this Ray node")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    drain = node_commands.add_parser(
        "drain", help="move this node's engine replicas elsewhere before it stops (a pod's preStop hook)"
    )
    drain.add_argument("--address", default="auto", help="the Ray cluster (default: the one this node is in)")
    drain.add_argument("--node-id", help="the node to drain (default: this machine's)")
    drain.add_argument("--deadline-s", type=float, default=600, help="seconds until the node is killed")
    drain.set_defaults(func=_drain)
    deploy = commands.add_parser("deploy", help="inspect a deployment on Kubernetes")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)
    status = deploy_commands.add_parser("status", help="RayService, Serve and GPU pod status")
    status.add_argument("name", help="the RayService's name (the Helm release's fullname)")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument("--kubeconfig", help="path to a kubeconfig (default: ~/.kube/config or in-cluster)")
    status.add_argument("--context", help="kubeconfig context")
    status.add_argument("--wait", action="store_true", help="poll until ready (exit 1 on timeout)")
    status.add_argument("--timeout", type=float, default=1800)
    status.add_argument("--poll", type=float, default=10, help="seconds between polls with --wait")
    status.set_defaults(func=_deploy_status)
    usage = commands.add_parser("usage", help="tokens and requests per tenant and model")
    usage.add_argument("--url", default="http://127.0.0.1:8000", help="the platform's base URL (its /metrics)")
    usage.add_argument("--api-key", help="a key for /metrics when keys are on [SLMSERVE_API_KEY]")
    usage.add_argument("--prometheus", help="a Prometheus that scrapes the platform: usage over --since")
    usage.add_argument("--since", help="the window, as Prometheus writes it: 15m, 1h, 7d")
    usage.set_defaults(func=_usage)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (CatalogError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
