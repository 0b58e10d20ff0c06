"""The model rule slmserve adds to Ray Serve's HAProxy config (services/haproxy), checked against
Ray's real template and the real HAProxy binary (`haproxy -c`); its behaviour through a live HAProxy
is tested in tests/live/test_direct_mode.py."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
from ray.serve.config import HTTPOptions

from services.core.layout import RECEIVED_HEADER
from services.haproxy.maps import HAProxyMap
from services.haproxy.rules import BUFFER_BYTES, MARK, RETRY_ON, add_rules
from services.haproxy.wrapper import ADAPTERS_MAP, MODELS_MAP, prepare, real_binary
from services.runtime import free_ports

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


class _Echo(BaseHTTPRequestHandler):
    """A backend that says which application it stands for and the path it was sent."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"app": self.server.app, "path": self.path}).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Received", self.headers.get(RECEIVED_HEADER) or "")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


GATEWAY_HEADER = "X-Gateway-Model-Name"


@dataclass
class LiveHAProxy:
    url: str
    adapters: HAProxyMap
    models: HAProxyMap
    model_header: str

    def post(
        self, body: bytes | dict, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return httpx.post(self.url + path, content=content, headers=sent, timeout=10)


@contextmanager
def live_haproxy(
    directory: Path, servers: dict[str, list[int]], model_header: str = "", retry_on: str = RETRY_ON
) -> Iterator[str]:
    """The real HAProxy on Ray's config (an application per key, under its prefix, with a server per
    port) and slmserve's rules; yields its URL once the platform application answers through it."""
    port, metrics_port, stats_port = free_ports(3)
    config = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        metrics_port=metrics_port,
        stats_port=stats_port,
        bufsize=BUFFER_BYTES,
        socket_path=str(directory / "admin.sock"),
        server_state_base=str(directory),
        server_state_file=str(directory / "state"),
        metrics_socket_path=str(directory / "metrics.sock"),
        retry_on=retry_on,
    )
    api = HAProxyApi(cfg=config, config_file_path=str(directory / "haproxy.cfg"))
    api.backend_configs = {
        app: BackendConfig(
            name=app,
            path_prefix="/" if app == "platform" else f"/_slmserve/{app}",
            servers=[ServerConfig(f"{app}-{i}", "127.0.0.1", server) for i, server in enumerate(ports)],
        )
        for app, ports in servers.items()
    }
    api._generate_config_file_internal()
    prepare(directory / "haproxy.cfg", ROUTES, model_header)
    process = subprocess.Popen([real_binary(), "-db", "-f", str(directory / "haproxy.cfg")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()["app"] == "platform":
                    break
            except (OSError, httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def echo_server(app: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.app = app  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module", params=["", GATEWAY_HEADER], ids=["body", "gateway-header"])
def haproxy(request, tmp_path_factory) -> Iterator[LiveHAProxy]:
    """The real HAProxy on Ray's config with the rule, in front of three echo backends; placing by
    the body alone, and also by a Gateway's model header (the chart's HTTPRoute option)."""
    directory = tmp_path_factory.mktemp("haproxy")
    servers = {app: echo_server(app) for app in ("platform", "alpha", "beta")}
    try:
        with live_haproxy(directory, {app: [s.server_port] for app, s in servers.items()}, request.param) as url:
            adapters = HAProxyMap(directory / ADAPTERS_MAP, directory / "admin.sock")
            models = HAProxyMap(directory / MODELS_MAP, directory / "admin.sock")
            yield LiveHAProxy(url, adapters, models, request.param)
    finally:
        for server in servers.values():
            server.shutdown()


def test_a_model_name_or_alias_goes_to_its_application_under_its_prefix(haproxy):
    for name, app in (("alpha", "alpha"), ("a", "alpha"), ("beta", "beta")):
        answer = haproxy.post({"model": name, "messages": []}).json()
        assert answer == {"app": app, "path": f"/_slmserve/{app}/v1/chat/completions"}
    later = haproxy.post({"messages": [{"role": "user", "content": "x" * 10_000}], "model": "beta"}).json()
    assert later["app"] == "beta"  # `model` after a large message, within the buffer


def test_what_the_rule_cannot_place_keeps_its_path_for_the_platform(haproxy):
    padding = "x" * (BUFFER_BYTES + 1024)
    for body in (
        {"model": "no-such-model"},
        {"prompt": "no model"},
        {"model": 42},
        b"not json at all",
        {"messages": [{"role": "user", "content": padding}], "model": "alpha"},  # `model` beyond the buffer
    ):
        assert haproxy.post(body).json() == {"app": "platform", "path": "/v1/chat/completions"}, str(body)[:80]
    control = httpx.get(f"{haproxy.url}/v1/models", timeout=10).json()
    assert control == {"app": "platform", "path": "/v1/models"}
    assert haproxy.post({"model": "alpha"}, path="/metrics").json()["app"] == "platform"  # only /v1/ POSTs move


def test_a_client_sent_internal_prefix_is_refused_before_anything_is_placed(haproxy):
    for path in ("/_slmserve/alpha/v1/chat/completions", "/_slmserve/beta/v1/models", "/_slmserve", "/_slmserve/"):
        refused = haproxy.post({"model": "alpha"}, path=path, headers={GATEWAY_HEADER: "alpha"})
        assert refused.status_code == 404 and refused.headers["x-slmserve-served-by"] == "haproxy"
        assert refused.json()["error"]["code"] == "route_not_found"


def test_every_request_carries_haproxy_s_own_receipt_time(haproxy):
    """The edge's `ingress` phase starts at this stamp: HAProxy's clock, never the client's."""
    for path, body in (("/v1/chat/completions", {"model": "alpha"}), ("/v1/completions", b"not json")):
        before = time.time()
        answer = haproxy.post(body, path=path, headers={RECEIVED_HEADER: "5"})
        stamped = int(answer.headers["x-echo-received"]) / 1e6
        assert before - 1 <= stamped <= time.time() + 1, (path, stamped, before)


def test_adapters_join_and_leave_the_running_haproxy_s_map(haproxy):
    assert haproxy.post({"model": "sql-bot"}).json()["app"] == "platform"
    haproxy.adapters.apply({"sql-bot": "/_slmserve/beta", "chat-bot": "/_slmserve/alpha"})
    assert haproxy.adapters.loaded() == {"sql-bot": "/_slmserve/beta", "chat-bot": "/_slmserve/alpha"}
    assert haproxy.post({"model": "sql-bot"}).json() == {"app": "beta", "path": "/_slmserve/beta/v1/chat/completions"}
    assert haproxy.post({"model": "chat-bot"}).json()["app"] == "alpha"
    haproxy.adapters.apply({"chat-bot": "/_slmserve/beta"})  # one withdrawn, one moved
    assert haproxy.post({"model": "sql-bot"}).json()["app"] == "platform"
    assert haproxy.post({"model": "chat-bot"}).json()["app"] == "beta"
    assert haproxy.adapters.map_path.read_text() == "chat-bot /_slmserve/beta\n"  # what a reload reads
    haproxy.adapters.apply({})
    assert haproxy.adapters.loaded() == {}


def test_a_gateway_s_model_header_places_without_the_body_only_when_named(haproxy):
    """Behind a body-routing Gateway the header names the model and no body is read (not even a
    body HAProxy could not parse); the header can only name what the maps hold, so an unknown one
    is left to the platform. Without the option the header means nothing."""
    named = {GATEWAY_HEADER: "a"}  # an alias
    if haproxy.model_header:
        assert haproxy.post(b"not json at all", headers=named).json()["app"] == "alpha"
        assert haproxy.post({"model": "beta"}, headers=named).json()["app"] == "alpha"  # beta's app would 404 it
        assert haproxy.post({"model": "beta"}, headers={GATEWAY_HEADER: "nope"}).json()["app"] == "platform"
        assert haproxy.post({"model": "beta"}, path="/metrics", headers=named).json()["app"] == "platform"
    else:
        assert haproxy.post(b"not json at all", headers=named).json()["app"] == "platform"
        assert haproxy.post({"model": "beta"}, headers=named).json()["app"] == "beta"


def test_a_model_header_that_is_not_a_header_name_is_refused(tmp_path: Path):
    config = ray_config(tmp_path)
    for bad in ("X-Model if TRUE", "a\nb", "" + "x" * 65):
        with pytest.raises(ValueError, match="not an HTTP header name"):
            prepare(config, ROUTES, bad)


class _Dropper(_Echo):
    """A replica lost while it held the request: it passes health checks, but reads each POST and
    closes the connection without a byte of an answer."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.dropped += 1  # type: ignore[attr-defined]
        self.close_connection = True


@pytest.mark.parametrize("retry_on", [RETRY_ON, "conn-failure"], ids=["slmserve", "ray-default"])
def test_a_request_no_replica_answered_is_retried_on_another(tmp_path: Path, retry_on: str):
    """One of a model's two replicas takes each request and closes without answering: with slmserve's
    retry policy every request is answered by the other (nothing had reached the client); with Ray's
    default (connection failures only) the ones it took fail."""
    dropper = ThreadingHTTPServer(("127.0.0.1", 0), _Dropper)
    dropper.app, dropper.dropped = "alpha", 0  # type: ignore[attr-defined]
    threading.Thread(target=dropper.serve_forever, daemon=True).start()
    platform, alpha = echo_server("platform"), echo_server("alpha")
    ports = {"platform": [platform.server_port], "alpha": [dropper.server_address[1], alpha.server_port]}
    try:
        with live_haproxy(tmp_path, ports, retry_on=retry_on) as url:
            body = json.dumps({"model": "alpha", "messages": []}).encode()
            answers = [httpx.post(f"{url}/v1/chat/completions", content=body, timeout=10).status_code for _ in range(8)]
    finally:
        for server in (dropper, platform, alpha):
            server.shutdown()
    assert dropper.dropped > 0  # type: ignore[attr-defined]  # the lost replica was chosen
    if retry_on == RETRY_ON:
        assert answers == [200] * 8
    else:
        assert answers.count(200) < 8


def test_a_newer_catalog_s_models_replace_the_running_map_and_survive_a_reload(haproxy, tmp_path: Path):
    """What the platform router does when a changed catalog is applied: a model added is placed on
    its application, one removed no longer is; the wrapper, run again at a reload, keeps the newer map."""
    newer = {"alpha": "/_slmserve/alpha", "gamma": "/_slmserve/beta"}  # `a` and `beta` removed, gamma added
    try:
        haproxy.models.apply(newer)
        assert haproxy.post({"model": "gamma"}).json()["app"] == "beta"
        assert haproxy.post({"model": "beta"}).json()["app"] == "platform"
        assert haproxy.post({"model": "alpha"}).json()["app"] == "alpha"
        config = haproxy.models.map_path.parent / "haproxy.cfg"
        prepare(config, ROUTES, haproxy.model_header)  # Ray reloads with the pods' original routes
        assert haproxy.models.map_path.read_text() == "alpha /_slmserve/alpha\ngamma /_slmserve/beta\n"
    finally:
        haproxy.models.apply(ROUTES)
    assert haproxy.post({"model": "beta"}).json()["app"] == "beta"


def test_a_client_cannot_send_the_header_that_names_the_picker(tmp_path: Path):
    """The engine replicas count requests by the picker named in this header (services/routing/arrivals.py):
    Ray's config removes every client-sent header of its prefix before the picker's own are set."""
    from services.core import ray_compat
    from services.routing.arrivals import HEADER

    prefix = ray_compat.serve_constants().SERVE_INGRESS_ROUTER_HEADER_PREFIX
    assert HEADER.startswith(prefix)
    config = ray_config(tmp_path)
    prepare(config, ROUTES)
    lines = [line.strip() for line in config.read_text().splitlines()]
    removal = next(n for n, line in enumerate(lines) if line.startswith(f"http-request del-header {prefix} -m beg"))
    asks_the_picker = next(n for n, line in enumerate(lines) if "lua.route_via_ingress_request_router" in line)
    assert removal < asks_the_picker
