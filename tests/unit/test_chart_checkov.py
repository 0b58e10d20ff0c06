"""checkov (offline, --skip-download) over everything the chart renders with every optional
object on, plus the Pods KubeRay creates from the RayService's head and worker templates: checkov
does not know the RayService kind, so without them it would never see a container. Every finding
must be justified in deploy/checkov-justifications.yaml, and every justification must still be
needed (a fixed finding's entry is removed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from testkit.helm import ALL_FEATURES, ROOT, by_kind, render

CHECKOV = shutil.which("checkov") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
JUSTIFICATIONS = ROOT / "deploy" / "checkov-justifications.yaml"


def pods_kuberay_creates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{rayservice['metadata']['name']}-{name}",
                "namespace": "llm",
                **group["template"].get("metadata", {}),
            },
            "spec": group["template"]["spec"],
        }
        for name, group in groups
    ]


def test_every_checkov_finding_is_fixed_or_justified(tmp_path: Path):
    assert Path(CHECKOV).is_file(), "checkov not installed: `make test` installs it into .venv-checkov"
    docs = render(*ALL_FEATURES)
    docs += pods_kuberay_creates(by_kind(docs, "RayService")[0])
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [
            CHECKOV,
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["summary"]["passed"] > 50, report["summary"]  # it really read the containers
    failed: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        failed.setdefault(check["check_id"], set()).add(check["resource"])
    justified = yaml.safe_load(JUSTIFICATIONS.read_text())
    unexplained = {check: sorted(resources) for check, resources in failed.items() if check not in justified}
    assert not unexplained, f"fix these or justify them in {JUSTIFICATIONS.name}: {unexplained}"
    stale = sorted(set(justified) - set(failed))
    assert not stale, f"no longer found, remove from {JUSTIFICATIONS.name}: {stale}"
