"""The local ingress environment: HAProxy's files per instance, within HAProxy's socket-path limit."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from services.core.catalog import parse_catalog
from services.core.settings import Settings
from services.runtime import INSTANCE_PORTS, free_ports, ingress_environment, local_base_url, routing_environment

RAY_NODE_ID_DIR = "/" + "f" * 56  # Ray puts each node's HAProxy files in a directory named by node id
HAPROXY_MAX_SOCKET_PATH = 97


def test_haproxy_files_are_per_instance_and_fit_haproxys_socket_path_limit():
    first, second = ingress_environment(Settings(port=65535)), ingress_environment(Settings(port=8000))
    assert first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for env in (first, second):
        for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
            path = Path(env[key])
            assert len(str(path.parent) + RAY_NODE_ID_DIR + "/" + path.name) <= HAPROXY_MAX_SOCKET_PATH
    assert first["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] != second["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert first["RAY_SERVE_HAPROXY_STATS_PORT"] != first["RAY_SERVE_HAPROXY_METRICS_PORT"]


def test_proxy_ingress_turns_haproxy_off_and_wildcard_hosts_are_polled_on_loopback():
    assert ingress_environment(Settings(ingress="proxy")) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "0.5",  # a dead proxy is restarted after 1.5 s either way
    }
    assert ingress_environment(Settings())["RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"] == "0.5"
    assert local_base_url(Settings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert local_base_url(Settings(host="127.0.0.1", port=9000)) == "http://127.0.0.1:9000"


def test_haproxy_is_told_what_the_catalog_s_routing_needs():
    def env(models: list[dict], data_plane: str = "auto") -> dict[str, str]:
        return routing_environment(parse_catalog({"edge": {"data_plane": data_plane}, "models": models}), "app")

    one = {"name": "m", "source": "org/m"}
    two = {**one, "deployment": {"num_replicas": 2}}
    assert env([one]) == {
        "RAY_SERVE_SESSION_ID_HEADER_KEY": "x-session-id",
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "0",  # nothing to choose
        "SLMSERVE_MODEL_ROUTES": '{"m": "/_slmserve/m"}',  # HAProxy's model map
    }
    assert env([two])["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "1"
    for policy in ("least-loaded", "session"):  # a Responses API follow-up's previous_response_id
        assert env([{**two, "routing": {"policy": policy}}])["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "1"
    assert env([{**two, "routing": {"policy": "power-of-two"}}])["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "0"
    assert (
        env([two], "routed")["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "0"
    )  # the PlatformIngress reads bodies
    assert env([two], "routed")["SLMSERVE_MODEL_ROUTES"] == "{}"  # nothing for HAProxy to place
    other = {"name": "o", "source": "org/o", "aliases": ["other"]}
    assert json.loads(env([one, other])["SLMSERVE_MODEL_ROUTES"]) == {
        "m": "/_slmserve/m",
        "o": "/_slmserve/o",
        "other": "/_slmserve/o",
    }
    assert env([one, two | {"name": "n"}])["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "1"  # any model
    to_zero = {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}
    held = {**other, "deployment": to_zero, "idle": {"hold_timeout_s": 60}}
    # a model that may have no replica is left to the platform application, which holds its requests
    assert json.loads(env([one, held])["SLMSERVE_MODEL_ROUTES"]) == {"m": "/_slmserve/m"}


def test_instance_ports_skip_listened_ports_and_stay_out_of_ray_s_and_the_kernel_s_ranges():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(port in INSTANCE_PORTS for port in ports)
    with socket.socket() as listener:  # a port something listens on on the wildcard is never chosen
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        with pytest.raises(RuntimeError, match="fewer than 1 free ports"):
            free_ports(1, candidates=range(taken, taken + 1))


def test_a_port_handed_out_is_never_handed_out_again_though_nothing_binds_it_yet():
    """A local cluster takes its Ray ports and then its HAProxy's in two calls, binding none in between:
    the second call once drew a port of the first (HAProxy: Address already in use)."""
    from services.runtime import free_ports

    first = free_ports(20, candidates=range(24000, 24100))
    second = free_ports(20, candidates=range(24000, 24100))
    assert len(set(first)) == 20 and not set(first) & set(second)
