"""`slmserve node drain`: what a node runs before it stops (the chart's preStop hook on GPU pods), so
that Kubernetes stopping a pod (scale-down, node drain, upgrade) cuts no stream.

It asks Ray's GCS to drain the node (the same call Ray's autoscaler v2 makes before it removes a
node), with the deadline after which the pod is killed. Serve then starts each engine replica of the
node elsewhere, keeps the old one serving until the new one runs, takes it out of HAProxy and stops
it gracefully (its streams finish within the deployment's graceful_shutdown_timeout_s). This waits
until no engine replica is left on the node, or the deadline, and says so in one line.
"""

from __future__ import annotations

import time

from services.core import ray_compat

ENGINE_REPLICA = "ServeReplica:"  # actor class names: ServeReplica:<application>:<deployment>
ENGINE_DEPLOYMENT = ":engine-"  # services.core.catalog.ModelEntry.deployment_name
POLL_S = 2.0


def engine_replicas_on(node_id: str) -> list[str]:
    """The live engine replica actors on a node (Ray's GCS actor table; blocking)."""
    return sorted(
        info["ActorClassName"]
        for info in ray_compat.alive_actors().values()
        if info.get("Address", {}).get("NodeID") == node_id
        and info.get("ActorClassName", "").startswith(ENGINE_REPLICA)
        and ENGINE_DEPLOYMENT in info.get("ActorClassName", "")
    )


def drain_node(address: str, node_id: str | None, deadline_s: float) -> int:
    """Drain `node_id` (default: this machine's node) of the Ray at `address`; 0 once no engine
    replica is left on it (or the deadline has passed, which the pod's kill then ends), 1 if Ray
    refused the drain."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        node = node_id or ray.get_runtime_context().get_node_id()
        deadline = time.monotonic() + deadline_s
        accepted, refusal = ray_compat.drain_node(
            ray.get_runtime_context().gcs_address,
            node,
            "slmserve node drain: the node is stopping",
            int(time.time() * 1000 + deadline_s * 1000),
        )
        if not accepted:
            print(f"[slmserve] Ray refused to drain node {node[:12]}: {refusal}", flush=True)
            return 1
        left = engine_replicas_on(node)
        while left and time.monotonic() < deadline:
            print(f"[slmserve] draining node {node[:12]}: {len(left)} engine replica(s) still serving", flush=True)
            time.sleep(POLL_S)
            left = engine_replicas_on(node)
        verdict = "no engine replica left" if not left else f"deadline reached with {len(left)} replica(s) serving"
        print(f"[slmserve] node {node[:12]} drained: {verdict}", flush=True)
        return 0
    finally:
        ray.shutdown()
