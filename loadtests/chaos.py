"""Chaos on a local multi-node Ray (issue 16 item 7): a head and two worker nodes on 127.0.0.1
(Ray's own `ray.cluster_utils.Cluster`, the helper Ray's tests use), two engine replicas of the
embedded model (one per worker node), HAProxy and the routing deployment on the head. Under a
bounded streaming load it then

1. kills a worker node mid-stream (its raylet and every process on it, no grace): the streams it
   held must end, never hang (direct data plane: a closed connection, as no process outlives the
   replica on the token path; routed: an SSE error event from the router, and none may end closed);
   new requests must keep succeeding on the other replica (at most a tenth of them may fail, those
   sent before Serve stops choosing the lost one); a node added back must get a
   replacement replica;
2. kills the routing replicas (direct: the ReplicaPicker, beside the stream: requests keep being
   served, as HAProxy falls back when the route call fails; routed: the PlatformIngress, the token path):
   Serve restarts them;
3. kills HAProxy: Serve's proxy restarts it and the port answers again;
4. drains a worker node whose replica holds streams, as a stopping pod's preStop hook does
   (`slmserve node drain`, services/drain.py), then kills it as Kubernetes then would: every stream
   must finish and no request fail, Serve having started the replica elsewhere first.

Each step's figures (requests sent and failed while it recovered, seconds to recover) go to
docs/reliability.md, a section per data plane.

    .venv/bin/python -m loadtests.chaos [--data-plane direct|routed]   # about 8 minutes on 2 cores
    .venv/bin/python -m loadtests.chaos --haproxy-only 3                 # step 3 alone, 3 times
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil

from loadtests.harness import ROOT, command_line, started_at
from loadtests.report import write_section
from testkit.live import long_stream
from testkit.serving import catalog_variant, running_replicas, until, wait_for_replicas

MODEL = "smollm2-135m-instruct"
STREAM = long_stream(MODEL, 400, "Tell a long story.")
PROBE = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HANG_S = 60.0  # a stream that neither ends nor moves for this long counts as hung


OUTCOMES = ("done", "sse_error", "closed", "hung", "refused")


@dataclass
class StreamEnd:
    outcome: str  # one of OUTCOMES
    chunks: int


@dataclass
class Probes:
    """One short request every `period_s` while a step recovers."""

    base_url: str
    period_s: float = 0.5
    results: list[tuple[float, int]] = field(default_factory=list)  # (sent at, status; 0 = no answer)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(f"{self.base_url}/v1/chat/completions", json=PROBE).status_code
                except httpx.HTTPError:
                    status = 0
                self.results.append((sent, status))
                self._stop.wait(max(0.0, self.period_s - (time.monotonic() - sent)))

    def stop(self) -> None:
        self._stop.set()

    def failed(self) -> int:
        return sum(status != 200 for _, status in self.results)


def read_stream(base_url: str) -> StreamEnd:
    chunks = 0
    try:
        with httpx.stream(
            "POST",
            f"{base_url}/v1/chat/completions",
            json=STREAM,
            trust_env=False,
            timeout=httpx.Timeout(10, read=HANG_S),
        ) as response:
            if response.status_code != 200:
                return StreamEnd("refused", 0)
            for line in response.iter_lines():
                if line.startswith('data: {"error"'):
                    return StreamEnd("sse_error", chunks)
                if line == "data: [DONE]":
                    return StreamEnd("done", chunks)
                chunks += line.startswith("data: ")
        return StreamEnd("closed", chunks)
    except httpx.ReadTimeout:
        return StreamEnd("hung", chunks)
    except httpx.HTTPError:
        return StreamEnd("closed", chunks)


def tally(ends: list[StreamEnd]) -> dict[str, int]:
    """How many streams ended each way."""
    return {outcome: sum(end.outcome == outcome for end in ends) for outcome in OUTCOMES}


def serves(base_url: str) -> bool:
    return httpx.post(f"{base_url}/v1/chat/completions", json=PROBE, timeout=30, trust_env=False).status_code == 200


def kill_processes(match) -> int:
    killed = 0
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if match(process):
                process.kill()
                killed += 1
        except psutil.Error:
            pass
    return killed


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--data-plane", choices=("direct", "routed"), default="direct")
    parser.add_argument(
        "--haproxy-only", type=int, default=0, metavar="N", help="only kill HAProxy, N times; print, write no docs"
    )
    args = parser.parse_args(argv)
    plane = args.data_plane
    # Ray resolves 127.0.0.1 in a cluster address to the host's own address unless clusters are
    # "not supported" (its switch for macOS and Windows); traffic here stays on loopback.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.settings import Settings

    def two_replicas(catalog: dict) -> None:
        entry = catalog["models"][0]
        entry["deployment"]["num_replicas"] = 2
        entry["deployment"]["ray_actor_options"] = {"num_cpus": 1, "resources": {"engine_node": 1}}
        entry["deployment"]["graceful_shutdown_timeout_s"] = 180  # a drained replica's streams finish
        entry["env"] = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        # the routing deployment on the head, never on a node that is killed or that an engine needs
        catalog.setdefault("edge", {})["data_plane"] = plane
        catalog["edge"]["deployment"] = {"ray_actor_options": {"num_cpus": 0.5, "resources": {"head_node": 0.01}}}

    path = catalog_variant("cpu", two_replicas)
    catalog = load_catalog(path)
    settings = Settings(catalog=str(path), port=runtime.free_ports(1)[0])
    # The switches a local run sets before Ray starts (services/runtime.py), for every node's processes.
    os.environ.update(
        runtime.local_environment(settings, catalog)
        | runtime.ingress_environment(settings)
        | runtime.routing_environment(catalog, settings.app_name)
    )
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"head_node": 1},
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    # Cluster reports the host's own address for the GCS; on a machine that allows loopback only,
    # everything must use 127.0.0.1.
    gcs = f"127.0.0.1:{cluster.address.rsplit(':', 1)[1]}"
    workers = [add_worker(cluster, gcs) for _ in range(2)]
    settings = settings.model_copy(update={"ray_address": gcs})
    base_url = f"http://127.0.0.1:{settings.port}"
    figures: list[dict] = []
    import ray
    from ray import serve

    ray.init(address=gcs)
    # One HAProxy, on the head: three nodes on one host cannot all bind the instance's port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": settings.port})
    try:
        runtime.start_local(settings, catalog, wait=False)
        runtime.wait_until_ready(base_url, 900)
        wait_for_replicas(base_url, 2, 600)
        print(f"[chaos] two engine replicas on two worker nodes, {plane} data plane; load starts", flush=True)
        if args.haproxy_only:
            for _ in range(args.haproxy_only):
                figures.append(kill_haproxy(base_url))
                time.sleep(5)
        else:
            figures.append(kill_worker_node(cluster, gcs, workers[0], base_url, plane))
            figures.append(kill_routing_replicas(base_url, ROUTING_DEPLOYMENT[plane]))
            figures.append(kill_haproxy(base_url))
            figures.append(drain_worker_node(cluster, gcs, workers[1], base_url))
    finally:
        runtime.shutdown()
        cluster.shutdown()
    if args.haproxy_only:
        recovered = [figure["recovered_s"] for figure in figures]
        print(f"[chaos] HAProxy killed {len(figures)} times, {plane}: serving again after {recovered} s", flush=True)
    else:
        write_report(figures, plane)
    ok = all(figure["ok"] for figure in figures)
    print("[chaos] PASS" if ok else "[chaos] FAIL", flush=True)
    return 0 if ok else 1


def _under_load(
    base_url: str, streams: int, action, recovered=None, timeout_s: float = 120
) -> tuple[list[StreamEnd], Probes, float, float | None]:
    """`streams` long streams and a probe loop; `action()` runs once the streams are flowing, and
    the seconds from it until `recovered()` holds are measured while the streams still run."""
    probes = Probes(base_url)
    prober = threading.Thread(target=probes.run, daemon=True)
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        pending = [pool.submit(read_stream, base_url) for _ in range(streams)]
        time.sleep(4)
        prober.start()
        acted_at = time.monotonic()
        action()
        recovered_s = until(recovered, timeout_s, period_s=0.2) if recovered is not None else None
        ends = [future.result() for future in pending]
    return ends, probes, acted_at, recovered_s


def add_worker(cluster, gcs: str):
    return cluster.add_node(num_cpus=1, resources={"engine_node": 1}, node_ip_address="127.0.0.1", gcs_address=gcs)


def kill_worker_node(cluster, gcs: str, node, base_url: str, plane: str) -> dict:
    print("[chaos] 1: killing a worker node mid-stream", flush=True)
    ends, probes, acted_at, _ = _under_load(base_url, 4, lambda: cluster.remove_node(node, allow_graceful=False))
    after = settle(probes, acted_at, 2)
    first_ok = next((sent - acted_at for sent, status in probes.results if sent > acted_at and status == 200), None)
    add_worker(cluster, gcs)
    replaced_s = until(lambda: running_replicas(base_url).get(MODEL, 0) >= 2, 600)
    outcomes = tally(ends)
    print(
        f"[chaos] 1: streams {outcomes}; probes after the kill: {len(after)} sent, "
        f"{sum(s != 200 for s in after)} failed; first success {first_ok}s; replacement replica running "
        f"{replaced_s}s after the node came back",
        flush=True,
    )
    return figure(
        "worker node killed mid-stream (4 streams, one replica on it)",
        outcomes,
        after,
        replaced_s,
        "a replacement replica RUNNING after a node was added back",
        first_success_s=first_ok,
        ok=outcomes["hung"] == 0
        and first_ok is not None
        and first_ok < 10
        # the other replica keeps serving: only the requests sent before Serve stopped choosing the
        # lost one may fail
        and sum(s != 200 for s in after) <= max(3, len(after) // 10)
        and replaced_s is not None
        # the router outlives the engine in the routed plane: it owes every cut stream an error event
        and (plane == "direct" or (outcomes["sse_error"] > 0 and outcomes["closed"] == 0)),
    )


# The deployment that decides where a request goes: beside the stream, or on it.
ROUTING_DEPLOYMENT = {"direct": "ReplicaPicker", "routed": "PlatformIngress"}


def kill_routing_replicas(base_url: str, deployment: str) -> dict:
    import ray

    print(f"[chaos] 2: killing the {deployment} replicas", flush=True)
    names = [actor for actor in ray.util.list_named_actors(all_namespaces=True) if _is_replica(actor, deployment)]

    def kill() -> None:
        for actor in names:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)

    killed = {actor["name"] for actor in names}
    # recovered: none of the killed replicas is listed any more, as many new ones are, and Serve
    # reports every deployment healthy
    ends, probes, acted_at, recovered_s = _under_load(
        base_url,
        2,
        kill,
        lambda: not (_replicas(deployment) & killed) and len(_replicas(deployment)) >= len(killed) and _all_healthy(),
    )
    after = settle(probes, acted_at, 2)
    outcomes = tally(ends)
    print(
        f"[chaos] 2: killed {sorted(killed)}; streams {outcomes}; probes {len(after)} sent, "
        f"{sum(s != 200 for s in after)} failed; {deployment} replaced and healthy after {recovered_s}s",
        flush=True,
    )
    return figure(
        f"every {deployment} replica killed ({len(names)}, 2 streams)",
        outcomes,
        after,
        recovered_s,
        f"new {deployment} replicas, every deployment HEALTHY",
        ok=bool(names) and outcomes["hung"] == 0 and recovered_s is not None,
    )


def _is_replica(actor: dict, deployment: str) -> bool:
    return f"#{deployment}#" in actor["name"]  # SERVE_REPLICA::APP#DEPLOYMENT#ID


def _replicas(deployment: str) -> set[str]:
    import ray

    return {
        actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if _is_replica(actor, deployment)
    }


def _all_healthy() -> bool:
    from ray import serve

    return all(
        info.status == "HEALTHY"
        for application in serve.status().applications.values()
        for info in application.deployments.values()
    )


def kill_haproxy(base_url: str) -> dict:
    print("[chaos] 3: killing HAProxy", flush=True)
    port = base_url.rsplit(":", 1)[1]
    mine = f"slmserve-{port}"  # the instance's HAProxy state directory (services/runtime.py)

    def is_ours(process: psutil.Process) -> bool:
        return process.info["name"] == "haproxy" and any(mine in part for part in process.info["cmdline"] or [])

    probes = Probes(base_url)
    prober = threading.Thread(target=probes.run, daemon=True)
    prober.start()
    time.sleep(2)
    acted_at = time.monotonic()
    killed = kill_processes(is_ours)
    recovered_s = until(lambda: serves(base_url), 120)
    after = settle(probes, acted_at, 2)
    print(
        f"[chaos] 3: {killed} haproxy process(es) on :{port} killed; probes {len(after)} sent, "
        f"{sum(s != 200 for s in after)} failed; serving again after {recovered_s}s",
        flush=True,
    )
    ok = killed > 0 and recovered_s is not None
    return figure("HAProxy killed", {}, after, recovered_s, "the port answers 200 again", ok=ok)


def drain_worker_node(cluster, gcs: str, node, base_url: str) -> dict:
    print("[chaos] 4: draining a worker node mid-stream, as a stopping pod's preStop hook does", flush=True)
    add_worker(cluster, gcs)  # room for the replacement, as a cluster's autoscaler would give
    command = [sys.executable, "-m", "services.cli", "node", "drain", "--address", gcs]
    command += ["--node-id", node.node_id, "--deadline-s", "300"]
    drain: dict[str, subprocess.Popen] = {}

    def start_drain() -> None:
        drain["process"] = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)

    ends, probes, acted_at, drained_s = _under_load(
        base_url, 4, start_drain, lambda: drain["process"].poll() is not None, timeout_s=360
    )
    said = drain["process"].stdout.read().strip().splitlines() if drain["process"].stdout else []
    cluster.remove_node(node, allow_graceful=False)  # the pod's kill once its preStop returned
    after = settle(probes, acted_at, 3)
    outcomes = tally(ends)
    print(
        f"[chaos] 4: streams {outcomes}; probes {len(after)} sent, {sum(s != 200 for s in after)} failed; "
        f"drain ended after {drained_s}s with {drain['process'].returncode}: {said[-1:] or 'nothing said'}",
        flush=True,
    )
    return figure(
        "worker node drained (slmserve node drain), then killed (4 streams)",
        outcomes,
        after,
        drained_s,
        "the drain returned: no engine replica left on the node",
        ok=drain["process"].returncode == 0
        and bool(said)
        and "no engine replica left" in said[-1]
        and outcomes["done"] == 4
        and not any(s != 200 for s in after),
    )


def settle(probes: Probes, acted_at: float, wait_s: float) -> list[int]:
    """The probes' statuses from the fault on, once `wait_s` more have run."""
    time.sleep(wait_s)
    probes.stop()
    return [status for sent, status in probes.results if sent > acted_at]


def figure(
    step: str,
    streams: dict[str, int],
    after: list[int],
    recovered_s: float | None,
    recovered: str,
    *,
    ok: bool,
    first_success_s: float | None = None,
) -> dict:
    """A step's figures for the report: its streams' ends, the probes sent after the fault (status
    codes; 0: no answer) and the seconds until `recovered` held."""
    return {
        "step": step,
        "streams": streams,
        "probes": len(after),
        "failed": sum(status != 200 for status in after),
        "first_success_s": first_success_s,
        "recovered_s": recovered_s,
        "recovered": recovered,
        "ok": ok,
    }


def _seconds(value: float | None) -> str:
    return "not within the limit" if value is None else f"{value:.1f} s"


def write_report(figures: list[dict], plane: str) -> None:
    started = started_at()
    rows = "".join(
        f"| {f['step']} | {', '.join(f'{k} {v}' for k, v in f['streams'].items() if v) or '-'} | {f['probes']} | "
        f"{f['failed']} | {_seconds(f['recovered_s'])} ({f['recovered']}) | {'pass' if f['ok'] else 'FAIL'} |\n"
        for f in figures
    )
    shape = {
        "direct": "direct data plane (HAProxy to the engine replica, the ReplicaPicker beside the stream)",
        "routed": "routed data plane (HAProxy to the PlatformIngress replica, which streams from the engine replica)",
    }[plane]
    body = f"""## Chaos on a local multi-node Ray: {plane} data plane

Run {started}: `.venv/bin/python -m loadtests.chaos --data-plane {plane}`. A head and two worker
nodes (a third joins for the drain) on 127.0.0.1 (`ray.cluster_utils.Cluster`), two replicas of the
embedded model (one per worker node, one core each), {shape}, HAProxy and the routing deployment on
the head; a probe request every 0.5 s during each step. "Streams" are the long streams in flight when
the fault hit: done (finished normally), sse_error (ended with an SSE error event), closed (connection
closed), hung (none allowed).

| fault | streams in flight | probes during recovery | probes failed | recovery | verdict |
|---|---|---|---|---|---|
{rows}
Raw figures: `{json.dumps(figures)}`
"""
    write_section(ROOT / "docs" / "reliability.md", "chaos" if plane == "direct" else "chaos-routed", body)
    print("[chaos] wrote docs/reliability.md", flush=True)


if __name__ == "__main__":
    sys.exit(main())
