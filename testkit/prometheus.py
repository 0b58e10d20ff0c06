"""A real Prometheus on 127.0.0.1 for tests and recorded runs (issue 19): a scrape config with the
targets and labels the chart's ServiceMonitor gives on a cluster, the chart's alert
rules loaded, and a small client for its HTTP API.

The binary is Debian's `prometheus` (installed by `deploy/tools/install_debian.sh prometheus`, which `make
test` runs); `prometheus_binary()` says where it is, or None.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from services import runtime

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "helm" / "slmserve" / "files" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "helm" / "slmserve" / "files" / "grafana-dashboard.json"
RELEASE, NAMESPACE = "slmserve", "slmserve"  # `helm install slmserve helm/slmserve -n slmserve`


def _installed(name: str) -> str | None:
    """On PATH, or where Debian's package puts it (a PATH without /usr/bin still finds it)."""
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


def prometheus_binary() -> str | None:
    return _installed("prometheus")


def promtool_binary() -> str | None:
    return _installed("promtool")


def scrape_config(app_url: str, interval_s: float, api_key: str = "") -> dict[str, Any]:
    """What prometheus-operator makes of the chart's ServiceMonitor, with a static target: the app's
    /metrics through the Service's `http` port, with the labels the operator adds. (The PodMonitor's
    target, Ray's own metrics agent, is not scraped here: local runs start Ray without its dashboard,
    and no panel or alert reads ray_* series.) With API keys on, it sends one, as the chart's
    `metrics.serviceMonitor.authorization` does."""
    job: dict[str, Any] = {
        "job_name": f"serviceMonitor/{NAMESPACE}/{RELEASE}/0",
        "metrics_path": "/metrics",
        "static_configs": [
            {
                "targets": [urlsplit(app_url).netloc],
                "labels": {"job": RELEASE, "namespace": NAMESPACE, "service": RELEASE, "endpoint": "http"},
            }
        ],
    }
    if api_key:
        job["authorization"] = {"type": "Bearer", "credentials": api_key}
    return {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [job],
    }


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log: Path

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": expr})["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step_s})["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets", {})["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._get("/api/v1/rules", {})["groups"] for rule in group["rules"]]

    def wait_for_scrapes(self, count: int = 2, timeout_s: float = 60) -> None:
        """Until every target has been scraped `count` times since now (rate() needs two samples)."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        scrapes: dict[str, int] = {}
        while time.monotonic() < deadline:
            for target in self.targets():
                key = target["scrapeUrl"]
                if target["health"] == "up" and target["lastScrape"] != seen.get(key):
                    seen[key] = target["lastScrape"]
                    scrapes[key] = scrapes.get(key, -1) + 1  # the first one seen may predate the call
            if scrapes and all(n >= count for n in scrapes.values()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Prometheus targets not scraped {count} times in {timeout_s:.0f}s: {self.targets()}")


@contextmanager
def local_prometheus(app_url: str, *, interval_s: float = 1.0, api_key: str = "") -> Iterator[Prometheus]:
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("no prometheus binary (deploy/tools/install_debian.sh prometheus installs it)")
    port = runtime.free_ports(1)[0]
    work = Path(tempfile.mkdtemp(prefix="slmserve-prometheus-"))
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(app_url, interval_s, api_key)))
    log = work / "prometheus.log"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        runtime.wait_for_ok(f"{url}/-/ready", 60)
        yield Prometheus(url, process, log)
    except Exception:
        print(log.read_text()[-3000:])
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
