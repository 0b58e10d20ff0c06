"""`slmserve deploy status`: what a platform engineer asks of a RayService while GPUs come up.

Reads, through the `kubernetes` client: the RayService's conditions and Serve application and
deployment statuses, the RayCluster it runs on, each Serve deployment's replicas (running against
the autoscaler's target, from Ray's Serve REST API on the head's dashboard port, reached through the
API server's service proxy), and its pods grouped by worker group, with the scheduler's reason for
every pending pod (e.g. "0/4 nodes are available: 4 Insufficient nvidia.com/gpu"), then prints one
summary.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
SERVE_DETAILS_PATH = "api/serve/applications/"  # Ray's ServeInstanceDetails (ray/serve/schema.py)


@dataclass
class Replicas:
    running: int
    target: int


@dataclass
class PodState:
    name: str
    group: str
    phase: str
    ready: bool
    reason: str = ""  # why a pending pod is not scheduled


@dataclass
class Report:
    name: str
    namespace: str
    ready: bool
    conditions: list[dict[str, str]]
    service_status: str
    cluster: str
    cluster_state: str
    applications: dict[str, dict[str, Any]]
    pods: list[PodState] = field(default_factory=list)
    replicas: dict[tuple[str, str], Replicas] = field(default_factory=dict)  # (application, deployment)
    replicas_unread: str = ""  # why the replicas could not be read (the dashboard not up yet, say)

    @property
    def pending(self) -> list[PodState]:
        return [pod for pod in self.pods if pod.phase == "Pending"]


def _is_ready(status: dict[str, Any]) -> bool:
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if "Ready" in conditions:  # KubeRay >= 1.3
        serving = conditions["Ready"] == "True"
    else:
        serving = status.get("serviceStatus") == "Running"
    applications = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    return serving and bool(applications) and all(a.get("status") == "RUNNING" for a in applications.values())


def _pod_state(pod: Any) -> PodState:
    labels = pod.metadata.labels or {}
    conditions = {c.type: c for c in (pod.status.conditions or [])}
    ready = conditions.get("Ready") is not None and conditions["Ready"].status == "True"
    reason = ""
    scheduled = conditions.get("PodScheduled")
    if pod.status.phase == "Pending" and scheduled is not None and scheduled.status == "False":
        reason = f"{scheduled.reason}: {scheduled.message}"
    return PodState(pod.metadata.name, labels.get("ray.io/group", "?"), pod.status.phase, ready, reason)


def read_replicas(api_client: Any, namespace: str, cluster: str) -> dict[tuple[str, str], Replicas]:
    """Running and target replicas per (application, Serve deployment), in one read of the head's
    dashboard (KubeRay names its service `<cluster>-head-svc`, port `dashboard`) through the API
    server's proxy."""
    from kubernetes import client

    response = client.CoreV1Api(api_client).connect_get_namespaced_service_proxy_with_path(
        f"{cluster}-head-svc:dashboard", namespace, SERVE_DETAILS_PATH, _preload_content=False
    )
    applications = json.loads(response.data).get("applications") or {}
    return {
        (app, name): Replicas(
            running=sum(replica.get("state") == "RUNNING" for replica in info.get("replicas") or []),
            target=int(info.get("target_num_replicas", 0)),
        )
        for app, details in applications.items()
        for name, info in (details.get("deployments") or {}).items()
    }


def read_report(api_client: Any, name: str, namespace: str) -> Report:
    from kubernetes import client

    rayservice = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    status = rayservice.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    cluster = active.get("rayClusterName") or ""
    applications = {
        app: {
            "status": info.get("status", "?"),
            "message": info.get("message", ""),
            "deployments": {
                d: (s.get("status", "?"), s.get("message", ""))
                for d, s in (info.get("serveDeploymentStatuses") or {}).items()
            },
        }
        for app, info in (active.get("applicationStatuses") or {}).items()
    }
    pods: list[PodState] = []
    replicas: dict[tuple[str, str], Replicas] = {}
    replicas_unread = ""
    if cluster:
        listed = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={cluster}")
        pods = sorted((_pod_state(pod) for pod in listed.items), key=lambda p: (p.group, p.name))
        try:
            replicas = read_replicas(api_client, namespace, cluster)
        except (client.exceptions.ApiException, ValueError) as error:
            replicas_unread = f"{getattr(error, 'status', '')} {getattr(error, 'reason', error)}".strip()
    return Report(
        name=name,
        namespace=namespace,
        ready=_is_ready(status),
        conditions=[
            {k: str(c.get(k, "")) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
        service_status=status.get("serviceStatus", ""),
        cluster=cluster,
        cluster_state=(active.get("rayClusterStatus") or {}).get("state", ""),
        applications=applications,
        pods=pods,
        replicas=replicas,
        replicas_unread=replicas_unread,
    )


def format_report(report: Report) -> str:
    lines = [f"RayService {report.namespace}/{report.name}: {'READY' if report.ready else 'NOT READY'}"]
    for condition in report.conditions:
        lines.append(
            f"  condition {condition['type']}={condition['status']} {condition['reason']}"
            f"{': ' + condition['message'] if condition['message'] else ''}"
        )
    if report.service_status:
        lines.append(f"  service status: {report.service_status}")
    lines.append(f"  ray cluster: {report.cluster or '(none yet)'} {report.cluster_state}".rstrip())
    for app, info in report.applications.items():
        lines.append(f"  application {app}: {info['status']} {info['message']}".rstrip())
        for deployment, (state, message) in sorted(info["deployments"].items()):
            counts = report.replicas.get((app, deployment))
            replicas = f" [{counts.running}/{counts.target} replicas running/target]" if counts else ""
            lines.append(f"    deployment {deployment}: {state}{replicas} {message}".rstrip())
    if report.replicas_unread:
        lines.append(f"  replicas: not read from the Serve API ({report.replicas_unread})")
    groups: dict[str, list[PodState]] = defaultdict(list)
    for pod in report.pods:
        groups[pod.group].append(pod)
    for group, pods in groups.items():
        running = sum(p.phase == "Running" for p in pods)
        ready = sum(p.ready for p in pods)
        pending = sum(p.phase == "Pending" for p in pods)
        lines.append(f"  group {group}: {len(pods)} pods, {running} running, {ready} ready, {pending} pending")
    for pod in report.pending:
        lines.append(f"    pending {pod.name}: {pod.reason or 'not scheduled yet'}")
    return "\n".join(lines)


def wait_for_ready(
    api_client: Any, name: str, namespace: str, timeout_s: float, poll_s: float = 10, on_report: Any = None
) -> Report:
    deadline = time.monotonic() + timeout_s
    while True:
        report = read_report(api_client, name, namespace)
        if on_report is not None:
            on_report(report)
        if report.ready or time.monotonic() + poll_s > deadline:
            return report
        time.sleep(poll_s)


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    from kubernetes import config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException:
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()
