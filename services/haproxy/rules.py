"""The frontend rules slmserve adds to Ray Serve's generated HAProxy config.

Ray Serve renders one backend per application, chosen by route prefix. A multi-model catalog in
direct mode is one application per model under an internal prefix (services/core/layout.py), so these
rules, placed first in the frontend, do what Ray's template cannot: read the JSON body's `model`,
look it up in a map (every model name, alias and served LoRA adapter -> its application's prefix)
and prepend that prefix to the path. Ray's own path rules then pick the backend, and its ingress
request router the replica, as for any application. Nothing is rewritten when the body has no
`model`, names no mapped model, is not JSON or is larger than HAProxy's buffer: the request keeps
its path and reaches the platform application at `/`, which answers as the routed plane does.

Behind a Gateway that has already read the body (the Gateway API Inference Extension's body-based
router sets `X-Gateway-Model-Name`), the chart names that header: the rules then place a request by
the header and read no body. The header can only name what `model` could (the same maps), and a
model's application answers 404 to a body naming another model.

A client never sends the internal prefix itself: such a path is refused with a 404 before the
rewrite, so every client request is placed by these rules or answered by the platform.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.core.layout import INTERNAL_PREFIX, RECEIVED_HEADER

MARK = "# slmserve: model routing"
FRONTEND = "frontend http_frontend"
# Bodies are buffered up to HAProxy's tune.bufsize to be read; with a larger one, `model` is not
# parsed and the platform application places the request (RAY_SERVE_HAPROXY_TUNE_BUFSIZE).
BUFFER_BYTES = 256 * 1024
# Ray's template retries a request on another replica (`option redispatch 1`) on the failures named
# here (RAY_SERVE_HAPROXY_RETRY_ON). Ray's default is a failed connection only; a replica lost while
# it held the request (it closed the connection before a byte of the answer) is as safe to retry,
# since nothing has reached the client: a completion has no side effect but its compute. Never once an
# answer has begun.
RETRY_ON = "conn-failure empty-response"
HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
BODY_WAIT_S = 5  # a client that sends its body slower than this is placed by the platform


def _refused_body() -> str:
    body = {
        "error": {
            "message": "route not found",
            "type": "invalid_request_error",
            "param": None,
            "code": "route_not_found",
        }
    }
    return json.dumps(json.dumps(body, separators=(",", ":")))  # one HAProxy double-quoted string


def frontend_rules(models_map: Path, adapters_map: Path, model_header: str = "") -> list[str]:
    """The rules, in order, as lines of the http frontend. With `model_header`, a request that
    carries it is placed by it, without waiting for its body."""
    placeable = "METH_POST { path_beg /v1/ }"
    by_header = []
    if model_header:
        if not HEADER_NAME.fullmatch(model_header):
            raise ValueError(f"not an HTTP header name: {model_header!r}")
        by_header = [
            f"    http-request set-var(txn.slmserve_model) req.hdr({model_header})"
            f" if {placeable} {{ req.hdr({model_header}) -m found }}"
        ]
        placeable += " !{ var(txn.slmserve_model) -m found }"
    return [
        f"    {MARK} (services/haproxy/rules.py)",
        f"    http-request return status 404 content-type application/json string {_refused_body()}"
        f" hdr X-Slmserve-Served-By haproxy if {{ path_beg {INTERNAL_PREFIX}/ }} || {{ path {INTERNAL_PREFIX} }}",
        f"    http-request set-header {RECEIVED_HEADER} %[date(0,us)]",
        *by_header,
        f"    http-request wait-for-body time {BODY_WAIT_S}s if {placeable}",
        f"    http-request set-var(txn.slmserve_model) req.body,json_query('$.model') if {placeable}",
        f"    http-request set-var(txn.slmserve_app) var(txn.slmserve_model),map({models_map})"
        " if { var(txn.slmserve_model) -m found }",
        f"    http-request set-var(txn.slmserve_app) var(txn.slmserve_model),map({adapters_map})"
        " if { var(txn.slmserve_model) -m found } !{ var(txn.slmserve_app) -m found }",
        "    http-request set-path %[var(txn.slmserve_app)]%[path] if { var(txn.slmserve_app) -m found }",
        "    # end of slmserve's model routing",
    ]


def add_rules(config: str, models_map: Path, adapters_map: Path, model_header: str = "") -> str:
    """`config` with the rules right after the http frontend's bind line (before Ray's own rules,
    which read the rewritten path). A config that has them already is returned unchanged."""
    if MARK in config:
        return config
    lines = config.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == FRONTEND), None)
    if start is None:
        raise ValueError(f"no '{FRONTEND}' section in HAProxy's config")
    bind = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("bind "))
    lines[bind + 1 : bind + 1] = frontend_rules(models_map, adapters_map, model_header)
    return "\n".join(lines) + "\n"


def map_text(routes: dict[str, str]) -> str:
    """An HAProxy map file: one `name prefix` line per served name."""
    return "".join(f"{name} {prefix}\n" for name, prefix in sorted(routes.items()))
