"""`make loadtest`: a bounded headless locust run against a local slmserve, with a summary.

Uses the server at --host if one answers; otherwise starts `slmserve serve` (the embedded default)
for the run and stops it afterwards. Traffic goes to 127.0.0.1 only, bounded in users and time.

With --workers N, locust runs in its own distributed mode: a master that hands the users to N worker
processes (each its own Python, so the load is not one core's) and writes the one report.

    make loadtest LOADTEST_ARGS="--workers 4 --users 32 --time 120s"
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtests.harness import (
    ROOT,
    command_line,
    locust_command,
    locust_master_flags,
    locust_worker_command,
    require_local,
)
from loadtests.wait_ready import ready
from services import runtime


def _start_server(port: int, catalog: str) -> subprocess.Popen:
    print(f"[loadtest] no server answers; starting `slmserve serve --catalog {catalog} --port {port}`", flush=True)
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--catalog", catalog, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize(prefix: Path) -> str:
    with open(f"{prefix}_stats.csv") as handle:
        rows = list(csv.DictReader(handle))
    lines = [f"{'entry':44} {'count':>7} {'fail':>5} {'p50':>9} {'p95':>9} {'mean':>9}"]
    for row in rows:
        lines.append(
            f"{row['Type'] + ' ' + row['Name']:44.44} {row['Request Count']:>7} {row['Failure Count']:>5} "
            f"{row['50%']:>9} {row['95%']:>9} {float(row['Average Response Time']):>9.1f}"
        )
    lines.append("(ttft/itl and HTTP rows in ms; output_tokens rows in tokens)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--host", default=os.environ.get("SLMSERVE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4)
    parser.add_argument("--time", default="60s")
    parser.add_argument("--catalog", default="cpu", help="catalog to start when no server answers")
    parser.add_argument("--workers", type=int, default=0, help="locust worker processes under a master; 0: one process")
    parser.add_argument("--out", default=str(ROOT / "out" / "loadtest"))
    parser.add_argument("user_classes", nargs="*", default=["StreamingChatUser", "ChatUser", "CompletionUser"])
    args, locust_extra = parser.parse_known_args(argv)
    require_local(parser, args.host)
    server = None
    if not ready(args.host):
        server = _start_server(int(args.host.rsplit(":", 1)[1].split("/")[0]), args.catalog)
        deadline = time.monotonic() + 900
        while not ready(args.host):
            if server.poll() is not None or time.monotonic() > deadline:
                print("[loadtest] the server did not become ready", file=sys.stderr)
                return 1
            time.sleep(2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    command = locust_command(args.host, args.users, args.spawn_rate, args.time, args.out)
    port = runtime.free_ports(1)[0] if args.workers else 0
    if args.workers:
        command += locust_master_flags(args.workers, port)
    command += [*locust_extra, *args.user_classes]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spread = f" over {args.workers} locust workers" if args.workers else ""
    print(f"[loadtest] {args.users} users{spread} for {args.time} against {args.host}", flush=True)
    workers: list[subprocess.Popen] = []
    try:
        master = subprocess.Popen(command, cwd=ROOT, env=env)
        worker = [*locust_worker_command(port), *locust_extra, *args.user_classes]
        workers = [subprocess.Popen(worker, cwd=ROOT, env=env) for _ in range(args.workers)]
        code = master.wait()
        print(summarize(Path(args.out)))
        print(f"[loadtest] CSV files: {args.out}_*.csv")
        return code
    finally:
        for process in workers:  # a worker ends with its master's quit message; one that did not is stopped
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=30)
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
