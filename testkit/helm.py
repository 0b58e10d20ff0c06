"""Rendering the Helm chart with the real Helm engine, for the chart's test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "slmserve"
# Every optional object of the chart switched on.
ALL_FEATURES = [
    "--set",
    "ingress.enabled=true",
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.podMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.grafanaDashboard.enabled=true",
    "--set",
    "karpenter.enabled=true",
    "--set",
    "secrets.hfToken.name=hf",
    "--set",
    "secrets.apiKeys.name=keys",
    "--set",
    "head.appProbes=true",
    "--set",
    "metrics.serviceMonitor.authorization.name=scrape-key",
    "--set",
    "gateway.httpRoute.enabled=true",
    "--set",
    "gateway.httpRoute.parentRefs[0].name=inference-gateway",
    "--set",
    "gateway.httpRoute.hostnames[0]=llm.example.com",
    "--set",
    "loadtest.enabled=true",
    "--set",
    "loadtest.apiKey.name=loadtest-key",
]


@cache
def helm() -> str:
    found = shutil.which("helm") or str(ROOT / ".venv" / "bin" / "helm")
    assert Path(found).is_file(), "helm not installed: `make test` installs it into .venv/bin"
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helm(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache"},
    )


def render(*args: str) -> list[dict]:
    result = run_helm("template", "rel", str(CHART), "--namespace", "llm", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]
