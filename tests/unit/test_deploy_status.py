"""`slmserve deploy status` against a Kubernetes API server double on 127.0.0.1.

A real kube-apiserver cannot run here (no Docker engine, no cluster), so this module serves
realistic RayService and Pod objects (shaped like KubeRay v1.7 and Kubernetes return them) over
HTTP, and the real `kubernetes` client talks to it through a kubeconfig, as on a cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from services.cli import main as cli_main
from services.deploy.status import SERVE_DETAILS_PATH

NS, NAME, CLUSTER = "llm", "slm-slmserve", "slm-slmserve-raycluster-x7k2p"


def rayservice(ready: bool) -> dict:
    deployments = {
        "PlatformIngress": {"status": "HEALTHY", "message": ""},
        "engine-microsoft-Phi-3.5-mini-instruct": {
            "status": "HEALTHY" if ready else "UPDATING",
            "message": "" if ready else "Deploying: 0/1 replicas running.",
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "namespace": NS},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                    "message": "" if ready else "no serve endpoints yet",
                }
            ],
            "activeServiceStatus": {
                "rayClusterName": CLUSTER,
                "rayClusterStatus": {"state": "ready", "readyWorkerReplicas": 1 if ready else 0},
                "applicationStatuses": {
                    "slmserve": {
                        "status": "RUNNING" if ready else "DEPLOYING",
                        "message": "",
                        "serveDeploymentStatuses": deployments,
                    }
                },
            },
        },
    }


def pod(name: str, group: str, phase: str, ready: bool, unschedulable: str = "") -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"ray.io/cluster": CLUSTER, "ray.io/group": group}},
        "spec": {"containers": [{"name": "ray", "image": "slmserve"}]},
        "status": {"phase": phase, "conditions": conditions},
    }


def serve_details(ready: bool) -> dict:
    """Ray's ServeInstanceDetails, trimmed to what `deploy status` reads: once ready, the engine is
    scaling from one replica to two (one RUNNING, one STARTING, target 2)."""

    def deployment(states: list[str], target: int) -> dict:
        return {
            "status": "HEALTHY",
            "target_num_replicas": target,
            "replicas": [{"replica_id": f"r{i}", "state": state} for i, state in enumerate(states)],
        }

    engine = deployment(["RUNNING", "STARTING"], 2) if ready else deployment(["STARTING"], 1)
    return {
        "applications": {
            "slmserve": {
                "status": "RUNNING" if ready else "DEPLOYING",
                "deployments": {
                    "PlatformIngress": deployment(["RUNNING"], 1),
                    "engine-microsoft-Phi-3.5-mini-instruct": engine,
                },
            }
        }
    }


class FakeAPI:
    def __init__(self) -> None:
        self.rayservice_reads = 0
        self.ready_after = 0  # reads before the RayService turns ready
        self.selectors: list[str] = []
        self.dashboard_up = True  # the head's dashboard answers through the service proxy


def handler_for(api: FakeAPI):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(unquote(self.path))  # the client sends a service proxy's "name:port" as %3A
            if url.path == f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}":
                api.rayservice_reads += 1
                return self._json(200, rayservice(ready=api.rayservice_reads > api.ready_after))
            if url.path.startswith("/apis/ray.io/v1/namespaces/"):
                return self._json(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "code": 404,
                        "message": "rayservices not found",
                    },
                )
            if url.path == f"/api/v1/namespaces/{NS}/services/{CLUSTER}-head-svc:dashboard/proxy/{SERVE_DETAILS_PATH}":
                if not api.dashboard_up:
                    return self._json(503, {"kind": "Status", "code": 503, "message": "no endpoints available"})
                return self._json(200, serve_details(ready=api.rayservice_reads > api.ready_after))
            if url.path == f"/api/v1/namespaces/{NS}/pods":
                api.selectors.append(parse_qs(url.query).get("labelSelector", [""])[0])
                ready = api.rayservice_reads > api.ready_after
                items = [
                    pod(f"{CLUSTER}-head-abcde", "headgroup", "Running", True),
                    pod(f"{CLUSTER}-gpu-1x-worker-1", "gpu-1x", "Running", ready),
                    pod(
                        f"{CLUSTER}-gpu-2x-worker-1",
                        "gpu-2x",
                        "Pending",
                        False,
                        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    ),
                ]
                return self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            return self._json(404, {"kind": "Status", "code": 404, "message": "not found"})

    return Handler


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[FakeAPI, Path]]:
    api = FakeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(api))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "double",
                "clusters": [{"name": "double", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
                "contexts": [{"name": "double", "context": {"cluster": "double", "user": "u", "namespace": NS}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    yield api, kubeconfig
    server.shutdown()


def test_status_reports_applications_groups_and_pending_gpu_pods(fake_api, capsys):
    api, kubeconfig = fake_api
    api.ready_after = 99
    code = cli_main(["deploy", "status", NAME, "-n", NS, "--kubeconfig", str(kubeconfig)])
    out = capsys.readouterr().out
    assert code == 1  # not ready
    assert f"RayService {NS}/{NAME}: NOT READY" in out
    assert "condition Ready=False ZeroServeEndpoints: no serve endpoints yet" in out
    assert "application slmserve: DEPLOYING" in out
    assert (
        "deployment engine-microsoft-Phi-3.5-mini-instruct: UPDATING [0/1 replicas running/target] "
        "Deploying: 0/1 replicas running." in out
    )
    assert "deployment PlatformIngress: HEALTHY [1/1 replicas running/target]" in out
    assert "group gpu-1x: 1 pods, 1 running, 0 ready, 0 pending" in out
    assert "group gpu-2x: 1 pods, 0 running, 0 ready, 1 pending" in out
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in out
    assert api.selectors == [f"ray.io/cluster={CLUSTER}"]


def wait_for_status(kubeconfig, timeout_s: str, poll_s: str = "0.05") -> int:
    """`slmserve deploy status --wait`."""
    arguments = ["deploy", "status", NAME, "-n", NS, "--kubeconfig", str(kubeconfig), "--wait"]
    return cli_main([*arguments, "--timeout", timeout_s, "--poll", poll_s])


def test_wait_polls_until_ready(fake_api, capsys):
    api, kubeconfig = fake_api
    api.ready_after = 2
    code = wait_for_status(kubeconfig, timeout_s="30")
    out = capsys.readouterr().out
    assert code == 0
    assert api.rayservice_reads == 3
    assert out.count("NOT READY") == 2 and f"RayService {NS}/{NAME}: READY" in out
    assert "deployment engine-microsoft-Phi-3.5-mini-instruct: HEALTHY [1/2 replicas running/target]" in out


def test_status_says_when_the_serve_api_cannot_be_read(fake_api, capsys):
    api, kubeconfig = fake_api
    api.dashboard_up = False
    code = cli_main(["deploy", "status", NAME, "-n", NS, "--kubeconfig", str(kubeconfig)])
    out = capsys.readouterr().out
    assert code == 0  # the RayService is ready; the replica counts are extra
    assert "replicas: not read from the Serve API (503" in out and "replicas running/target" not in out


def test_wait_times_out(fake_api, capsys):
    api, kubeconfig = fake_api
    api.ready_after = 10_000
    code = wait_for_status(kubeconfig, timeout_s="0.3", poll_s="0.1")
    assert code == 1
    assert "timed out" in capsys.readouterr().err


def test_missing_rayservice_is_a_clear_error(fake_api, capsys):
    _, kubeconfig = fake_api
    code = cli_main(["deploy", "status", "absent", "-n", NS, "--kubeconfig", str(kubeconfig)])
    assert code == 2
    assert "404 Not Found" in capsys.readouterr().err
