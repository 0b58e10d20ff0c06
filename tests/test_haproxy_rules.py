"""The model rule slmserve adds to Ray Serve's HAProxy config (services/haproxy), checked against
Ray's real template and the real HAProxy binary (`haproxy -c`); its behaviour through a live HAProxy
is tested in tests/test_direct_mode.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig

from services.haproxy.rules import MARK, add_rules
from services.haproxy.wrapper import ADAPTERS_MAP, MODELS_MAP, prepare, real_binary

ROUTES = {"alpha": "/_slmserve/alpha", "a": "/_slmserve/alpha", "beta": "/_slmserve/beta"}


def ray_config(directory: Path) -> Path:
    """Ray's own config for a platform application at / and two model applications, one with an
    ingress request router (as services/app.py deploys a model with a replica choice)."""
    config = HAProxyConfig(
        socket_path=str(directory / "admin.sock"),
        server_state_base=str(directory),
        server_state_file=str(directory / "state"),
        metrics_socket_path=str(directory / "metrics.sock"),
    )
    api = HAProxyApi(cfg=config, config_file_path=str(directory / "haproxy.cfg"))
    router = ServerConfig("router-1", "127.0.0.1", 30010, replica_id="router-1")
    api.backend_configs = {
        "platform": BackendConfig(name="platform", path_prefix="/", servers=[ServerConfig("p1", "127.0.0.1", 30001)]),
        "alpha": BackendConfig(
            name="alpha",
            path_prefix="/_slmserve/alpha",
            servers=[ServerConfig("a1", "127.0.0.1", 30002, "a1"), ServerConfig("a2", "127.0.0.1", 30003, "a2")],
            ingress_request_router_servers=[router],
        ),
        "beta": BackendConfig(
            name="beta", path_prefix="/_slmserve/beta", servers=[ServerConfig("b1", "127.0.0.1", 30004)]
        ),
    }
    api._generate_config_file_internal()
    return directory / "haproxy.cfg"


def haproxy_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([real_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)


def test_the_rule_in_ray_s_own_config_is_valid_haproxy(tmp_path: Path):
    config = ray_config(tmp_path)
    prepare(config, ROUTES)
    checked = haproxy_check(config)
    assert checked.returncode == 0, checked.stderr
    assert (tmp_path / MODELS_MAP).read_text().splitlines() == [
        "a /_slmserve/alpha",
        "alpha /_slmserve/alpha",
        "beta /_slmserve/beta",
    ]
    assert (tmp_path / ADAPTERS_MAP).read_text() == ""  # the platform fills it


def test_the_rule_comes_before_every_rule_of_ray_s_and_is_added_once(tmp_path: Path):
    config = ray_config(tmp_path)
    prepare(config, ROUTES)
    prepare(config, ROUTES)  # Ray reloads: the wrapper runs again on a config it may have seen
    lines = config.read_text().splitlines()
    assert sum(MARK in line for line in lines) == 1
    frontend = lines.index("frontend http_frontend")
    rules = [i for i, line in enumerate(lines) if i > frontend and line.strip().startswith("http-request")]
    start = next(i for i, line in enumerate(lines) if MARK in line)
    end = next(i for i, line in enumerate(lines) if "end of slmserve's model routing" in line)
    ours = [i for i in rules if start < i < end]
    assert ours and ours == rules[: len(ours)]  # Ray's path rules (and its Lua router) see the new path
    refused = lines[ours[0]]
    assert "return status 404" in refused and "path_beg /_slmserve/" in refused  # before any rewrite
    assert "set-path" in lines[ours[-1]]


def test_a_broken_config_fails_the_check(tmp_path: Path):
    """The check above can fail: a rule with a map that is missing is refused by HAProxy."""
    config = ray_config(tmp_path)
    config.write_text(add_rules(config.read_text(), tmp_path / "missing.map", tmp_path / "missing-too.map"))
    assert haproxy_check(config).returncode != 0


def test_a_config_without_ray_s_frontend_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="http_frontend"):
        add_rules("global\n    maxconn 10\n", tmp_path / "m.map", tmp_path / "a.map")


def test_the_refusal_is_an_openai_error_body(tmp_path: Path):
    config = ray_config(tmp_path)
    prepare(config, ROUTES)
    lines = config.read_text().splitlines()
    refused = next(line for line in lines if "return status 404" in line and "_slmserve" in line)
    quoted = refused.split(" string ", 1)[1].split(" hdr ", 1)[0]
    assert json.loads(json.loads(quoted))["error"]["code"] == "route_not_found"
