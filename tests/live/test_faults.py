"""Fault behaviour with the real application: an engine replica's process is killed mid-stream.
Runs after every other test (the `disrupts_app` marker, tests/conftest.py) because it disturbs
the application. Writes its figures to
out/reliability.json (docs/reliability.md quotes them)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.disrupts_app
MOE = "tiny-phimoe"
BODY = {"model": MOE, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
ROOT = Path(__file__).resolve().parents[2]


def stream_in_background(live_server, max_tokens: int) -> tuple[list[str], threading.Event]:
    """Start a long stream on tiny-phimoe in a thread; return once 5 events have arrived, with the
    list its `data:` lines keep landing in and an event set when the stream ends."""
    body = {**BODY, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    ended = threading.Event()

    def stream() -> None:
        with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
        ended.set()

    threading.Thread(target=stream, daemon=True).start()
    deadline = time.monotonic() + 30
    while len(lines) < 5:
        assert time.monotonic() < deadline, "the stream never started"
        time.sleep(0.02)
    return lines, ended


def test_killed_engine_replica_ends_streams_cleanly_and_recovers(live_server):
    pid = live_server.engine_handle(MOE).info.remote().result()["pid"]
    lines, ended = stream_in_background(live_server, 1500)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    # The in-flight stream ends with an error event, never hangs.
    assert ended.wait(30), "the stream hung after its replica died"
    assert '"code": "replica_failed"' in lines[-2] and lines[-1] == "data: [DONE]"
    stream_ended_s = time.monotonic() - killed_at

    # Meanwhile new requests fail fast with 503 + Retry-After (or succeed once the replica is back);
    # readiness reflects the outage; service returns without manual action.
    saw_503 = saw_not_ready = False
    recovered_at = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = live_server.http.post("/v1/chat/completions", json=BODY, timeout=60)
        if response.status_code == 503:
            saw_503 = True
            assert response.headers.get("retry-after")
            assert response.json()["error"]["code"] in ("replica_unavailable", "model_not_ready")
            assert time.monotonic() - started < 35
        elif response.status_code == 200 and saw_503:
            recovered_at = time.monotonic()
            break
        else:
            assert response.status_code == 200, response.text
        if httpx.get(f"{live_server.base_url}/v1/health/ready").status_code == 503:
            saw_not_ready = True
        time.sleep(0.5)
    assert recovered_at is not None, "the model did not come back within 240 s"
    assert saw_503 and saw_not_ready
    assert live_server.engine_handle(MOE).info.remote().result()["pid"] != pid  # a new replica
    recovery_s = recovered_at - killed_at
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "reliability.json").write_text(
        json.dumps({"stream_error_after_kill_s": round(stream_ended_s, 2), "recovery_s": round(recovery_s, 1)})
    )


def _broker_pid(live_server) -> int:
    from services.core import ray_compat

    name = f"ServeReplica:{live_server.settings.app_name}:LimitBroker"
    pids = [info["Pid"] for info in ray_compat.alive_actors().values() if info["ActorClassName"] == name]
    assert len(pids) == 1, pids
    return int(pids[0])


def test_a_broker_restart_mid_run_loses_no_request_and_counts_each_slot_once(live_server):
    """The limit broker's process dies while two streams hold two of tiny-phimoe's four slots and two
    more requests arrive: Serve starts a new broker, the edge re-declares the two streams' tickets to
    it, the two requests wait for it instead of failing, and the bound still holds afterwards."""
    from ray import serve

    broker = serve.get_deployment_handle("LimitBroker", app_name=live_server.settings.app_name)
    streams = [stream_in_background(live_server, 1500) for _ in range(2)]
    assert broker.in_flight.remote().result()[MOE] == 2
    pid = _broker_pid(live_server)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def short(_: int) -> tuple[int, float]:
        response = live_server.http.post("/v1/chat/completions", json=BODY, timeout=60)
        return response.status_code, time.monotonic() - killed_at

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        during = list(pool.map(short, range(2)))
    assert [status for status, _ in during] == [200, 200], during  # waited for the new broker: none lost
    assert _broker_pid(live_server) != pid
    assert not any(ended.is_set() for _, ended in streams), "the streams ended before the check"
    deadline = time.monotonic() + 5  # the two short requests' releases are on their way
    while (counted := broker.in_flight.remote().result()[MOE]) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted == 2  # the streams' slots, re-declared once each; not forgotten, not counted twice
    for lines, ended in streams:
        assert ended.wait(120), "a stream hung across the broker's restart"
        assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines), lines[-3:]
        assert any('"finish_reason":"length"' in line for line in lines)
    live_server.wait_until_idle(MOE)  # released to the new broker: back to 0, not below
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # all four slots free again, none stuck
        assert [status for status, _ in pool.map(short, range(4))] == [200] * 4
    reliability = ROOT / "out" / "reliability.json"
    figures = json.loads(reliability.read_text()) if reliability.exists() else {}
    figures["requests_during_broker_restart_answered_s"] = [round(seconds, 2) for _, seconds in during]
    reliability.parent.mkdir(exist_ok=True)
    reliability.write_text(json.dumps(figures))


def test_stopping_lets_the_streams_in_flight_finish(live_server):
    """Graceful stop: what `slmserve serve` does when told to stop (SIGTERM from a supervisor or
    Kubernetes, Ctrl-C) lets every stream already running finish before its replica exits, where
    Serve's own shutdown cuts them with the proxy (3 of 3 streams cut in 0.34 s before this).
    Last test of the session: the application is gone afterwards."""
    from ray import serve

    from services import runtime

    lines, ended = stream_in_background(live_server, 600)
    stopping = threading.Thread(target=runtime.stop_gracefully, args=(live_server.settings, live_server.catalog))
    stopping.start()
    assert ended.wait(90), "the stream hung while the application stopped"
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines), lines[-3:]
    assert any('"finish_reason":"length"' in line for line in lines)  # all 600 tokens, not cut short
    stopping.join(90)
    assert not stopping.is_alive(), "the stop did not return after the streams finished"
    assert live_server.settings.app_name not in serve.status().applications
