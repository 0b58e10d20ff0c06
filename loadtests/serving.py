"""One `slmserve serve` instance in a subprocess, on its own port and Ray, for tests and benchmarks
that need a catalog of their own next to (or instead of) the test session's application."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services import runtime
from services.settings import resolve_catalog_path

Catalog = dict[str, Any]


def catalog_variant(name: str, change: Callable[[Catalog], None]) -> Path:
    """A shipped catalog with `change` applied, written to a temporary file."""
    catalog = yaml.safe_load(resolve_catalog_path(name).read_text())
    change(catalog)
    path = Path(tempfile.mkdtemp(prefix="slmserve-catalog-")) / f"{name}-variant.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def serving(catalog: str | Path, *, api_keys: str = "", ready_timeout_s: float = 900,
            on_start: Callable[[str], None] | None = None) -> Iterator[ServerProcess]:
    """`slmserve serve --catalog CATALOG` on a free port; yields once it is ready, stops it (Ctrl-C,
    then a kill) afterwards. `on_start(base_url)` runs right after the start, before the wait."""
    port = runtime.free_ports(1)[0]
    base_url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="slmserve-serve-")) / "serve.log"
    env = {key: value for key, value in os.environ.items() if key not in ("SLMSERVE_API_KEYS", "RAY_ADDRESS")}
    env |= {"SLMSERVE_API_KEYS": api_keys, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--catalog", str(catalog),
                                "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    try:
        if on_start is not None:
            on_start(base_url)
        runtime.wait_until_ready(base_url, ready_timeout_s)
        yield ServerProcess(base_url, process, log)
    except Exception:
        print(log.read_text()[-5000:])
        raise
    finally:
        process.send_signal(signal.SIGINT)  # `slmserve serve` stops Serve and Ray on Ctrl-C
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
