"""A short headless load test (about 20 s, 9 users, every user class, over two locust workers under a
master: locust's distributed mode, as `make loadtest --workers N` runs it) against the live test app:
zero failures, one report with the TTFT / ITL / token entries of both workers, and the streams locust
cut off when it stopped leave no work behind in any engine."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from testkit.live import API_KEY

ROOT = Path(__file__).resolve().parents[2]


def test_headless_locust_smoke_has_no_failures(live_server, tmp_path: Path):
    # Through `make loadtest`'s own script: it finds the server up, runs locust, prints a summary.
    prefix = tmp_path / "smoke"
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    # One user per unit of the classes' weights (4+2+1+1+1), so that locust gives every class a user.
    command = [
        sys.executable,
        "-m",
        "loadtests.run_loadtest",
        "--host",
        live_server.base_url,
        "--users",
        "9",
        "--spawn-rate",
        "9",
        "--time",
        "20s",
        "--workers",
        "2",
        "--out",
        str(prefix),
        "--max-tokens=16",
        "--prompt-words=32",
        "--models=moe:1",  # the other classes send default and vision; random mixes flake
        f"--api-key-file={key_file}",  # as the chart mounts its Secret
        "StreamingChatUser",
        "ChatUser",
        "CompletionUser",
        "VisionUser",
        "MixedModelUser",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "output_tokens" in result.stdout and "CSV files:" in result.stdout  # the printed summary
    # The master runs no users and exits non-zero unless both workers connected (--expect-workers):
    # every request below came through them.
    assert "over 2 locust workers" in result.stdout
    with open(f"{prefix}_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0
    requests = sum(
        int(row["Request Count"])
        for name, row in rows.items()
        if name.startswith("/v1/chat") or name.startswith("/v1/completions")
    )
    assert requests >= 10
    for entry in ("ttft", "itl", "output_tokens"):
        assert int(rows[entry]["Request Count"]) > 0, entry
    assert float(rows["output_tokens"]["Average Response Time"]) == 16  # ignore_eos: fixed-length outputs
    assert any("vision" in name for name in rows) and any(
        "[stream tiny-phimoe]" in name or "[stream moe]" in name for name in rows
    )
    live_server.wait_until_idle()
