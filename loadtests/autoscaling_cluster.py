"""Cluster autoscaling on one machine (issue 18): Ray's own autoscaler adds worker nodes of the
catalog's node groups for replicas Serve cannot place, and removes them once idle; the SLO policy
adds a replica under load and takes it away after; the replica taken away finishes its streams.

The cluster is real Ray: a head started by `ray start --head` with an autoscaling config for Ray's
fake multi-node provider (`ray.autoscaler._private.fake_multi_node`), whose "nodes" are real raylets
on 127.0.0.1 advertising the GPUs of their group. The node types come from the catalog's `cluster:`
block, the same block the Helm chart renders into worker groups and autoscaler options. The
application is slmserve's own, deployed by this process as `slmserve serve` would.

    .venv/bin/python -m loadtests.autoscaling_cluster [--json PATH] [--docs docs]   # about 4 minutes

tests/cluster/test_autoscaling_live.py runs it and asserts on the JSON; `--docs` writes the timeline plot and
figures to docs/autoscaling.md.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.autoscaling_run import poll_until, read_sample
from loadtests.harness import ROOT, command_line
from loadtests.ray_head import stop_ray_head
from loadtests.report import write_section
from loadtests.sse import StreamMeter
from testkit.serving import session_homes

CATALOG = ROOT / "loadtests" / "autoscaling-cluster.yaml"
HEAD_CPUS = 2  # the head holds Serve's controller, HAProxy, the ReplicaPicker and the metrics hub; no GPU


def log(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


class LocalAutoscalingCluster:
    """A head node with Ray's autoscaler on the fake multi-node provider: worker nodes of the catalog's
    node groups are started (and stopped) by the autoscaler itself as raylets on this machine. Every
    port is the instance's own; stopping it ends only its own processes."""

    def __init__(self, catalog: Any, env: dict[str, str]) -> None:
        from services import runtime

        if catalog.cluster is None:
            raise ValueError("the catalog has no cluster block: no node groups to autoscale")
        self.cluster = catalog.cluster
        self.env = env
        (
            self.gcs_port,
            self.client_port,
            self.manager_port,
            self.object_port,
            self.agent_port,
            self.agent_grpc_port,
            self.metrics_port,
            self.runtime_env_port,
        ) = runtime.free_ports(8)
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        # Token authentication on, with this cluster's own token (not the user's ~/.ray one): the
        # head, the nodes its autoscaler starts and the driver all read it from the environment.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.workdir = Path(tempfile.mkdtemp(prefix="slmserve-cluster-"))
        self.process: subprocess.Popen[bytes] | None = None

    def autoscaling_config(self) -> dict[str, Any]:
        autoscaler = self.cluster.autoscaler
        speed = {"Default": 1.0, "Aggressive": 1000.0, "Conservative": 0.5}[autoscaler.upscaling_mode]
        node_types = self.cluster.ray_node_types()
        for node_type in node_types.values():  # each raylet's object store: small, they share one machine
            node_type["resources"]["object_store_memory"] = 100 * 2**20
        return {
            "cluster_name": f"slmserve-{self.gcs_port}",
            "max_workers": sum(group.max_nodes for group in self.cluster.node_groups),
            "upscaling_speed": speed,
            "idle_timeout_minutes": autoscaler.idle_timeout_s / 60,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": self.gcs_address,
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0},
                **node_types,
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def start(self) -> str:
        config = self.workdir / "autoscaling.json"
        config.write_text(json.dumps(self.autoscaling_config()))
        ray = Path(sys.executable).with_name("ray")
        command = [
            str(ray),
            "start",
            "--head",
            "--block",
            f"--autoscaling-config={config}",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--ray-client-server-port={self.client_port}",
            f"--node-manager-port={self.manager_port}",
            f"--object-manager-port={self.object_port}",
            f"--dashboard-agent-listen-port={self.agent_port}",
            f"--dashboard-agent-grpc-port={self.agent_grpc_port}",
            f"--metrics-export-port={self.metrics_port}",
            f"--runtime-env-agent-port={self.runtime_env_port}",
            f"--num-cpus={HEAD_CPUS}",
            "--num-gpus=0",
            f"--object-store-memory={200 * 2**20}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        env = os.environ | self.env | self.auth | {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        log_file = (self.workdir / "head.log").open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.gcs_address

    def head_log(self) -> str:
        return (self.workdir / "head.log").read_text(errors="replace")

    def stop(self) -> None:
        """Ends the head and every process it and its autoscaler started (worker raylets included),
        and nothing else on the machine (no `ray stop`)."""
        if self.process is None:
            return
        stop_ray_head(self.process, self.gcs_address)
        self.process = None


def worker_nodes(groups: list[Any]) -> dict[str, str]:
    """Alive worker nodes of the cluster this process is connected to: node id -> node group, known
    by the GPUs and CPUs the node advertises (the head advertises no GPU and the head's CPUs)."""
    import ray

    shapes = {(float(group.gpus), float(group.cpus)): group.name for group in groups}
    nodes = {}
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        shape = (float(resources.get("GPU", 0)), float(resources.get("CPU", 0)))
        if node.get("Alive") and shape in shapes:
            nodes[node["NodeID"]] = shapes[shape]
    return nodes


def deployment_details(app_name: str, deployment: str) -> dict[str, Any]:
    """Serve's own details of one deployment (its replicas' states and nodes, its target count)."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details().get("applications", {}).get(app_name, {})
    found: dict[str, Any] = details.get("deployments", {}).get(deployment, {})
    return found


def replicas_by_node(app_name: str, deployment: str) -> dict[str, str]:
    """Running replicas of one deployment: replica id -> node id."""
    replicas = deployment_details(app_name, deployment).get("replicas", [])
    return {r["replica_id"]: r["node_id"] for r in replicas if r.get("state") == "RUNNING"}


@dataclass
class Tick:
    t: float
    target: float | None
    running: float
    waiting: float
    nodes: dict[str, int]  # node type -> alive worker nodes
    placement: dict[str, str]  # running replica id -> node type


@dataclass
class Stream:
    started: float
    ended: float
    replica: str | None
    ok: bool
    finish_reason: str | None
    phase: str


@dataclass
class ClusterTimeline:
    ticks: list[Tick] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # phase -> seconds since the deploy
    node_types_launched: list[str] = field(default_factory=list)  # in launch order
    replica_nodes: dict[str, str] = field(default_factory=dict)  # every replica that ran -> its node's type
    seen_nodes: list[str] = field(default_factory=list)
    targets: list[tuple[float, int]] = field(default_factory=list)  # (time, Serve's target replicas) at each change

    def first(self, condition: Callable[[Tick], bool], after: float = 0.0) -> float | None:
        return next((tick.t for tick in self.ticks if tick.t >= after and condition(tick)), None)

    def peak_target(self) -> int:
        return max((target for _, target in self.targets), default=0)

    def session_moved(self, removed: list[str], after: float) -> float | None:
        """When a quiet session first left the removed replica: the moment Serve told it to go, at the
        latest. Serve's details can come seconds late on a busy machine (the target seen falling only
        after the replica had gone: the fresh-clone CI, twice); the sessions say it sooner. Each
        replica holds its own sessions' streams until one of them is told to go, so a stream that
        gives the other replica more at once than the removed one ever held is a session that moved."""
        quiet = [s for s in self.streams if s.phase == "quiet" and s.started >= after]

        def at_once(streams: list[Stream], t: float) -> int:
            return sum(1 for s in streams if s.started <= t < s.ended)

        mine = [s for s in quiet if s.replica in removed]
        held = max((at_once(mine, s.started) for s in mine), default=0)
        others = [s for s in quiet if s.replica not in removed]
        return next(
            (s.started for s in sorted(others, key=lambda s: s.started) if held and at_once(others, s.started) > held),
            None,
        )

    def figures(self) -> dict[str, Any]:
        step, end = self.marks.get("step", 0.0), self.marks.get("step_end", 0.0)
        total_nodes = lambda tick: sum(tick.nodes.values())  # noqa: E731
        second_node = self.first(lambda tick: total_nodes(tick) >= 2, step)
        # Serve's target replicas, read from its details a few times a second (the /metrics gauge lags)
        scaled_up = next((t for t, target in self.targets if t >= step and target >= 2), None)
        serving_two = self.first(lambda tick: tick.running >= 2, step)
        back_to_one = self.first(lambda tick: tick.target == 1 and tick.running == 1, end)
        one_node_again = self.first(lambda tick: total_nodes(tick) == 1, back_to_one or end)
        # The replica taken away, and the streams it held when Serve decided to scale down (its target
        # fell): each started before the decision and
        # ended after it, so it was served to its end by a replica on its way out; and none started
        # on that replica after the decision (it takes no new requests while it drains).
        removed = [r for r in self.replica_nodes if r not in (self.ticks[-1].placement if self.ticks else {})]
        scaled_down = next((t for t, target in self.targets if t >= end and target < self.peak_target()), None)
        moved = self.session_moved(removed, end)
        if moved is not None and (scaled_down is None or moved < scaled_down):
            scaled_down = moved
        on_removed = [s for s in self.streams if s.replica in removed]
        # Seen no earlier than it was made: a stream of the removed replica (which takes none once told
        # to go) that ended as the decision was seen was still running when it was made.
        in_flight_at_removal = [s for s in on_removed if scaled_down is not None and s.started < scaled_down <= s.ended]
        started_after = [s for s in on_removed if scaled_down is not None and s.started > scaled_down]
        changes = [(a, b) for (_, a), (_, b) in itertools.pairwise(self.targets) if a != b]
        measured = [s for s in self.streams if s.phase != "cut"]  # not the ones the harness ended at the end
        return {
            "first_node_s": self.marks.get("first_node"),
            "ready_s": self.marks.get("ready"),
            "node_types_launched": self.node_types_launched,
            "replica_node_types": sorted(set(self.replica_nodes.values())),
            "scale_up_decision_s": None if scaled_up is None else round(scaled_up - step, 1),
            "scale_down_decision_s": None if scaled_down is None else round(scaled_down - end, 1),
            "second_node_s": None if second_node is None else round(second_node - step, 1),
            "second_replica_serving_s": None if serving_two is None else round(serving_two - step, 1),
            "scale_down_s": None if back_to_one is None else round(back_to_one - end, 1),
            "idle_node_removed_s": (
                None if one_node_again is None or back_to_one is None else round(one_node_again - back_to_one, 1)
            ),
            "scale_ups": sum(1 for a, b in changes if b > a),
            "scale_downs": sum(1 for a, b in changes if b < a),
            "requests": len(measured),
            "failed": sum(1 for s in measured if not s.ok),
            "replicas_that_served": len({s.replica for s in self.streams if s.replica}),
            "removed_replicas": removed,
            "streams_in_flight_on_removed_replica": len(in_flight_at_removal),
            "streams_on_removed_replica_failed": sum(1 for s in in_flight_at_removal if not s.ok),
            "streams_started_on_removed_replica_after_decision": len(started_after),
        }


def stream(
    client: httpx.Client,
    url: str,
    model: str,
    max_tokens: int,
    clock: float,
    phase: str,
    headers: dict[str, str] | None = None,
    cut: threading.Event | None = None,
) -> Stream:
    """One stream to its end, or until `cut` is set (the harness is done measuring: phase "cut")."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
    }
    started = time.monotonic()
    meter, replica = StreamMeter(started), None
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            replica = response.headers.get("x-slmserve-replica")
            for line in response.iter_lines():
                meter.feed(line, time.monotonic())
                if cut is not None and cut.is_set():
                    return Stream(
                        round(started - clock, 1), round(time.monotonic() - clock, 1), replica, False, None, "cut"
                    )
            ok = response.status_code == 200 and meter.done and meter.stats.error is None
    except httpx.HTTPError:
        ok = False
    reason = meter.stats.finish_reason
    return Stream(
        round(started - clock, 1), round(time.monotonic() - clock, 1), replica, ok and reason == "length", reason, phase
    )


def sessions_on_each_replica(base_url: str, model: str, header: str, replicas: int, tries: int = 40) -> list[str]:
    """One session id per replica: the `session` routing policy pins a session to a replica
    (rendezvous hashing). A session counts once three short requests of it met the same replica:
    while HAProxy's config lags a replica that has just started, one request can meet the other."""
    found: dict[str, str] = {}
    for index in range(tries):
        session = f"quiet-{index}"
        (seen,) = session_homes(base_url, model, header, [session], probes=3).values()
        if len(seen) == 1 and "" not in seen:
            found.setdefault(seen.pop(), session)
        if len(found) >= replicas:
            break
    return list(found.values())


def run_scenario(
    base_url: str,
    model: str,
    deployment: str,
    app_name: str,
    clock: float,
    timeline: ClusterTimeline,
    groups: list[Any],
    session_header: str,
    *,
    # More than one engine runs at once (max_num_seqs 4: the queue is the SLO policy's signal), and
    # more than the policy's idle bound holds (0.8 x target_ongoing_requests 5 = 4), so two replicas
    # serving the step are never idle before it ends (with 6, one scaled down mid-step once).
    step_streams: int = 8,
    quiet_streams: int = 4,
    step_tokens: int = 200,
    quiet_tokens: int = 1800,
    # Two quiet streams per replica, the second pair started this much later: at any moment each
    # replica holds one. With one stream per replica, the policy's idle condition and a stream's end
    # could meet (the decision came just as the removed replica's stream ended: CI, twice), and a
    # stream of the tiny model (at most max_model_len tokens) can be shorter than the policy's delays.
    quiet_stagger_s: float = 6.0,
) -> None:
    """A load step until a second replica serves on a second node, then `quiet_streams` long streams,
    pinned by their sessions two to a replica and staggered (no more than one engine runs at once,
    max_num_seqs in the catalog, so they never call the second replica back), until the model is back
    to one replica and the idle node is gone: whichever replica goes is serving when told to."""
    url = f"{base_url}/v1/chat/completions"
    load: dict[str, Any] = {"users": 0, "tokens": step_tokens, "phase": "step", "sessions": []}
    stop = threading.Event()

    def user(index: int) -> None:
        staggered = False
        with httpx.Client(timeout=300, trust_env=False) as client:
            while not stop.is_set():
                if index >= load["users"]:
                    time.sleep(0.2)
                    continue
                sessions = load["sessions"]
                if load["phase"] == "quiet" and not staggered:
                    staggered = True
                    stop.wait(quiet_stagger_s * (index // max(1, len(sessions))))
                headers = {session_header: sessions[index % len(sessions)]} if sessions else None
                phase, tokens = str(load["phase"]), int(load["tokens"])
                timeline.streams.append(stream(client, url, model, tokens, clock, phase, headers, stop))

    def sample() -> Tick:
        metrics = read_sample(base_url, clock, model)
        nodes = worker_nodes(groups)
        placement = {
            replica: nodes.get(node, "head") for replica, node in replicas_by_node(app_name, deployment).items()
        }
        for node_id, node_type in nodes.items():
            if node_id not in timeline.seen_nodes:
                timeline.seen_nodes.append(node_id)
                timeline.node_types_launched.append(node_type)
        timeline.replica_nodes.update(placement)
        counts: dict[str, int] = {}
        for node_type in nodes.values():
            counts[node_type] = counts.get(node_type, 0) + 1
        tick = Tick(metrics.t, metrics.target, metrics.running, metrics.waiting, counts, placement)
        timeline.ticks.append(tick)
        return tick

    def until(condition: Callable[[Tick], bool], limit_s: float, label: str) -> bool:
        def note(tick: Tick) -> str:
            return (
                f"[cluster] t={tick.t:5.0f}s {label}: target {tick.target} running {tick.running:g} waiting "
                f"{tick.waiting:g}; nodes {tick.nodes}; {len(timeline.streams)} requests"
            )

        if poll_until(sample, condition, limit_s, note):
            return True
        log(f"{label}: not reached within {limit_s:.0f}s")
        return False

    def watch_target() -> None:  # often, on its own: the scale-down decision is a moment, not a state
        while not stop.is_set():
            try:
                target = deployment_details(app_name, deployment).get("target_num_replicas")
                if target is not None and (not timeline.targets or timeline.targets[-1][1] != target):
                    timeline.targets.append((round(time.monotonic() - clock, 1), int(target)))
            except Exception as error:  # a busy controller: try again
                log(f"Serve's details not read: {error!r}")
            stop.wait(0.25)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(max(step_streams, quiet_streams))]
    threads.append(threading.Thread(target=watch_target, daemon=True))
    for thread in threads:
        thread.start()
    try:
        until(lambda tick: False, 3, "baseline")
        timeline.marks["step"] = time.monotonic() - clock
        load["users"] = step_streams
        if until(lambda tick: tick.running >= 2, 300, "load step"):
            until(lambda tick: False, 5, "two replicas")
        timeline.marks["step_end"] = time.monotonic() - clock
        load["users"] = 0  # the step's streams finish; the quiet ones start once pinned
        sessions = sessions_on_each_replica(base_url, model, session_header, 2)
        log(f"quiet streams pinned by sessions {sessions}")
        load.update(users=quiet_streams, tokens=quiet_tokens, phase="quiet", sessions=sessions)
        if until(lambda tick: tick.target == 1 and tick.running == 1, 180, "after the step"):
            until(lambda tick: sum(tick.nodes.values()) == 1, 120, "idle node")
        load["users"] = 0
        stop.set()  # the quiet streams still running (up to 1,800 tokens each) are cut: the timeline is complete
        for thread in threads:
            thread.join(timeout=300)
        sample()
    finally:
        stop.set()


def run(catalog_path: Path = CATALOG, progress_json: Path | None = None) -> ClusterTimeline:
    """Start the cluster, deploy the catalog, run the scenario, stop everything."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray's addresses on 127.0.0.1
    from services import runtime
    from services.core.catalog import load_catalog
    from services.core.layout import layout
    from services.core.settings import Settings

    catalog = load_catalog(catalog_path)
    entry = catalog.models[0]
    settings = Settings(catalog=str(catalog_path), port=runtime.free_ports(1)[0])
    env = runtime.local_environment(settings, catalog) | runtime.ingress_environment(settings)
    env |= runtime.routing_environment(catalog, settings.app_name)
    os.environ.update(env)  # this driver reads the same switches
    cluster = LocalAutoscalingCluster(catalog, env)
    os.environ.update(cluster.auth)
    timeline = ClusterTimeline()
    gcs = cluster.start()
    log(f"head at {gcs}; node groups {[g.name for g in catalog.cluster.node_groups]}")  # type: ignore[union-attr]
    import ray
    from ray import serve

    try:
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds to accept drivers
            try:
                ray.init(address=gcs, log_to_driver=False)
                break
            except ConnectionError:
                if time.monotonic() > deadline or cluster.process is None or cluster.process.poll() is not None:
                    raise RuntimeError(f"the head did not start:\n{cluster.head_log()[-3000:]}") from None
                time.sleep(1)
        # One HTTP ingress, on the head: the "nodes" share this machine and its ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": settings.port})
        clock = time.monotonic()
        settings = settings.model_copy(update={"ray_address": gcs})
        groups = cluster.cluster.node_groups
        deployed = threading.Event()

        def watch_first_node() -> None:  # the first replica waits for a node: when does one join?
            while not deployed.is_set() and "first_node" not in timeline.marks:
                if worker_nodes(groups):
                    timeline.marks["first_node"] = round(time.monotonic() - clock, 1)
                deployed.wait(1)

        watcher = threading.Thread(target=watch_first_node, daemon=True)
        watcher.start()
        try:  # in direct mode this returns once the engine replica answers HTTP
            runtime.start_local(settings, catalog, wait=False)
            base_url = runtime.local_base_url(settings)
            runtime.wait_until_ready(base_url, 600, failed=lambda: runtime.deploy_failures(catalog, settings.app_name))
        finally:
            deployed.set()
            watcher.join()
        timeline.marks["ready"] = round(time.monotonic() - clock, 1)
        log(f"ready after {timeline.marks['ready']}s; worker nodes {worker_nodes(groups)}")
        run_scenario(
            base_url,
            entry.name,
            entry.deployment_name,
            layout(catalog, settings.app_name).app_of(entry),  # the model's own application (direct)
            clock,
            timeline,
            groups,
            catalog.edge.session_header,
        )
    finally:
        try:
            if progress_json is not None:  # what there is of the timeline, also after a failure
                progress_json.write_text(json.dumps({"timeline": asdict(timeline)}))
            runtime.shutdown()
        finally:
            cluster.stop()
    return timeline


def plot(timeline: ClusterTimeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (nodes, replicas, load) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    times = [tick.t for tick in timeline.ticks]
    for node_type in sorted({t for tick in timeline.ticks for t in tick.nodes}):
        nodes.step(
            times, [tick.nodes.get(node_type, 0) for tick in timeline.ticks], where="post", label=f"{node_type} nodes"
        )
    nodes.set_ylabel("worker nodes")
    nodes.set_yticks([0, 1, 2])
    nodes.legend(loc="upper right")
    replicas.step(times, [tick.target or 0 for tick in timeline.ticks], where="post", label="target replicas")
    replicas.step(times, [tick.running for tick in timeline.ticks], where="post", label="running replicas")
    replicas.set_ylabel("replicas")
    replicas.set_yticks([0, 1, 2])
    replicas.legend(loc="upper right")
    load.plot(times, [tick.waiting for tick in timeline.ticks], label="requests waiting in the engines")
    ok = [(s.started, s.ended) for s in timeline.streams if s.ok]
    failed = [(s.started, s.ended) for s in timeline.streams if not s.ok and s.phase != "cut"]
    load.scatter([e for _, e in ok], [0.2] * len(ok), s=8, color="tab:green", label="stream finished")
    load.scatter([e for _, e in failed], [0.2] * len(failed), s=20, color="tab:red", marker="x", label="stream failed")
    load.set_xlabel("seconds since the deploy")
    load.legend(loc="upper right")
    for axis in (nodes, replicas, load):
        axis.axvspan(timeline.marks.get("step", 0), timeline.marks.get("step_end", 0), color="orange", alpha=0.15)
    figure.suptitle("Local autoscaling cluster: nodes, replicas and load (one run; shaded: the load step)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def report(timeline: ClusterTimeline, ended: datetime.datetime) -> str:
    f = timeline.figures()
    return (
        f"Run ended {ended:%Y-%m-%d %H:%M UTC} on this machine (2 cores): "
        f"`loadtests/autoscaling-cluster.yaml` (tiny-phimoe, one GPU per replica, node groups gpu-1x and gpu-2x, "
        f"idle timeout 10 s) on Ray's fake multi-node provider; command "
        f"`.venv/bin/python -m loadtests.autoscaling_cluster --docs docs`.\n\n"
        f"| figure | value |\n|---|---|\n"
        f"| seconds from the deploy to the first worker node / to ready | {f['first_node_s']} / {f['ready_s']} |\n"
        f"| node types launched | {', '.join(f['node_types_launched'])} |\n"
        f"| nodes the replicas ran on | {', '.join(f['replica_node_types'])} |\n"
        f"| seconds from the load step to the scale-up decision | {f['scale_up_decision_s']} |\n"
        f"| seconds from the load step to the second node | {f['second_node_s']} |\n"
        f"| seconds from the load step to the second replica serving | {f['second_replica_serving_s']} |\n"
        f"| seconds from the end of the step to the scale-down decision / to one replica again | "
        f"{f['scale_down_decision_s']} / {f['scale_down_s']} |\n"
        f"| seconds from one replica again to the idle node's removal | {f['idle_node_removed_s']} |\n"
        f"| scale-ups / scale-downs | {f['scale_ups']} / {f['scale_downs']} |\n"
        f"| requests / failed | {f['requests']} / {f['failed']} |\n"
        f"| streams in flight on the removed replica at the decision / failed | "
        f"{f['streams_in_flight_on_removed_replica']} / {f['streams_on_removed_replica_failed']} |\n"
        f"| streams the removed replica took after the decision | "
        f"{f['streams_started_on_removed_replica_after_decision']} |\n\n"
        f"![cluster autoscaling timeline](autoscaling_cluster.png)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--catalog", type=Path, default=CATALOG)
    parser.add_argument("--json", type=Path, help="write the timeline and its figures here")
    parser.add_argument("--docs", type=Path, help="write the figures and the plot into this docs folder")
    parser.add_argument("--from-json", type=Path, help="no run: report the timeline a run wrote with --json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())["timeline"]
        timeline = ClusterTimeline(
            **saved | {"ticks": [Tick(**t) for t in saved["ticks"]], "streams": [Stream(**s) for s in saved["streams"]]}
        )
    else:
        timeline = run(args.catalog, args.json)
    figures = timeline.figures()
    if args.json is not None and args.from_json is None:
        args.json.write_text(json.dumps({"timeline": asdict(timeline), "figures": figures}))
    if args.docs is not None:
        plot(timeline, args.docs / "autoscaling_cluster.png")
        ended = (
            datetime.datetime.fromtimestamp(args.from_json.stat().st_mtime, datetime.UTC)
            if args.from_json is not None
            else datetime.datetime.now(datetime.UTC)
        )
        write_section(args.docs / "autoscaling.md", "autoscaling-cluster", report(timeline, ended))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
