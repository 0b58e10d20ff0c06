"""`slmserve serve` that cannot start: one clear line and exit 1, never a traceback (issue 34 item 4).
Run as a user would, as a subprocess; neither case starts an engine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from services.core.timing import RAY_START_ATTEMPTS
from services.runtime import free_ports

ROOT = Path(__file__).resolve().parents[2]


def serve(port: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--catalog", "cpu", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def said(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("[slmserve] ")]


def test_a_port_in_use_is_one_line_before_anything_starts():
    (port,) = free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = serve(port)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"[slmserve] port {port} on 127.0.0.1 is in use by another process" in result.stderr
    assert not any("local Ray" in line for line in said(result))  # refused before Ray was tried


def test_a_ray_that_cannot_start_is_tried_again_then_one_line(tmp_path: Path):
    """Ray's temporary directory made impossible (a path under a file): every try fails at once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (port,) = free_ports(1)
    result = serve(port, {"RAY_TMPDIR": str(blocker / "ray")})
    lines = said(result)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert sum("the local Ray did not start (" in line and "trying again" in line for line in lines) == (
        RAY_START_ATTEMPTS - 1
    )
    final = [line for line in result.stderr.splitlines() if line.startswith("[slmserve] ")]
    assert len(final) == 1 and f"did not start after {RAY_START_ATTEMPTS} tries" in final[0], final
    assert "Not a directory" in final[0] and "load average" in final[0]
