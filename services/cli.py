"""`slmserve serve | catalog validate | catalog show`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from services.catalog import CatalogError, load_catalog
from services.settings import Settings, resolve_catalog_path


def _serve(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in
                 {"catalog": args.catalog, "port": args.port, "host": args.host}.items() if value is not None}
    settings = Settings(**overrides)
    catalog = load_catalog(resolve_catalog_path(settings.catalog))
    from services import runtime

    base_url = f"http://{settings.host}:{settings.port}"
    print(f"[slmserve] starting {len(catalog.models)} model(s) from catalog {settings.catalog!r}", flush=True)
    started = time.monotonic()
    runtime.start_local(settings, catalog, wait=False)
    stop = {"now": False}

    def _interrupt(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        runtime.wait_until_ready(base_url, args.ready_timeout, progress=True)
        print(f"[slmserve] ready in {time.monotonic() - started:.0f}s: {base_url}/v1", flush=True)
        for entry in catalog.models:
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"[slmserve]   model {entry.name}{aliases}", flush=True)
        print("[slmserve] Ctrl-C to stop", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
    except (TimeoutError, KeyboardInterrupt) as error:
        if isinstance(error, TimeoutError):
            print(f"[slmserve] {error}", file=sys.stderr, flush=True)
            return 1
    finally:
        print("[slmserve] shutting down", flush=True)
        runtime.shutdown()
    return 0


def _validate(args: argparse.Namespace) -> int:
    catalog = load_catalog(Path(args.file))
    if args.engine_args:
        from services.engine import vllm_compat

        for entry in catalog.models:
            vllm_compat.engine_namespace(entry.source, entry.names, entry.engine_args)
    names = ", ".join(entry.name for entry in catalog.models)
    print(f"{args.file}: valid ({len(catalog.models)} model(s): {names})")
    return 0


def _show(args: argparse.Namespace) -> int:
    catalog = load_catalog(resolve_catalog_path(args.catalog))
    print(json.dumps(catalog.model_dump(mode="json"), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slmserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a catalog on this machine (local Ray)")
    serve.add_argument("--catalog", help="catalog name (cpu, phi35, test) or YAML path [SLMSERVE_CATALOG]")
    serve.add_argument("--port", type=int, help="HTTP port [SLMSERVE_PORT, 8000]")
    serve.add_argument("--host", help="bind address [SLMSERVE_HOST, 127.0.0.1]")
    serve.add_argument("--ready-timeout", type=float, default=900, help="seconds to wait for engines")
    serve.set_defaults(func=_serve)
    catalog = commands.add_parser("catalog", help="work with catalog files")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    validate = catalog_commands.add_parser("validate", help="validate a catalog file")
    validate.add_argument("file")
    validate.add_argument("--engine-args", action="store_true",
                          help="also check engine_args names against the installed vLLM")
    validate.set_defaults(func=_validate)
    show = catalog_commands.add_parser("show", help="print a catalog as validated JSON")
    show.add_argument("catalog")
    show.set_defaults(func=_show)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CatalogError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
