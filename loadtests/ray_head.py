"""Stopping a Ray head that `ray start --head --block` runs in a session of its own (the autoscaling
cluster harness, `make bench`): everything it started goes, and nothing else on the machine (no
`ray stop`)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil


def stop_ray_head(process: subprocess.Popen[bytes], gcs_address: str) -> None:
    """Ends the head and every process it (and an autoscaler of its) started, worker raylets included."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)  # the head drains its node first; what is left after this is killed
    except subprocess.TimeoutExpired:
        pass
    for member in [*family, psutil.Process(process.pid) if process.poll() is None else None]:
        if member is None:
            continue
        try:
            member.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    # `ray start` named this head as the machine's current cluster, where a later bare `ray.init()`
    # would try to join it: take that back, as `ray stop` would. Ray writes the address with the
    # node's own IP whatever `--node-ip-address` says, so the port tells this head's entry.
    from ray._common.utils import get_ray_address_file

    current = Path(get_ray_address_file(None))
    port = gcs_address.rsplit(":", 1)[1]
    if current.is_file() and current.read_text().strip().rsplit(":", 1)[-1] == port:
        current.unlink()
