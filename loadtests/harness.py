"""What every load-test and benchmark script shares: the repository's folders, the run's timestamp,
a command line with the script's docstring as help, the rule that traffic stays on this machine,
and the one locust command line (`make loadtest` and the soak run it)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"  # results people read: sections of docs/*.md and their plots
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
LOCAL_HOSTS = ("http://127.", "http://localhost", "http://[::1]")


def out_dir(*parts: str) -> Path:
    """`out/` (logs, CSV files, raw JSON: what a run leaves beside its docs), created."""
    path = ROOT.joinpath("out", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def started_at() -> str:
    """The run's start as the docs print it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def require_local(parser: argparse.ArgumentParser, host: str) -> None:
    if not host.startswith(LOCAL_HOSTS):
        parser.error("load tests only target this machine (127.0.0.1 / localhost)")


def _locust() -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


def locust_command(host: str, users: int, spawn_rate: float, run_time: str, csv_prefix: Path | str) -> list[str]:
    """Headless locust on loadtests/locustfile.py, summary only; append the locustfile's own flags
    and the user classes."""
    return [
        *_locust(),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        run_time,
        "--csv",
        str(csv_prefix),
        "--only-summary",
    ]


def locust_master_flags(workers: int, port: int) -> list[str]:
    """What turns `locust_command` into the master of `workers` locust workers (locust's own
    distributed mode): it waits for them, hands out the users, and writes the one CSV report."""
    return [
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        str(port),
        "--expect-workers",
        str(workers),
        "--expect-workers-max-wait",
        "120",
    ]


def locust_worker_command(master_port: int) -> list[str]:
    """One locust worker of the master on this machine; append the locustfile's flags and user classes."""
    return [
        *_locust(),
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(master_port),
    ]
