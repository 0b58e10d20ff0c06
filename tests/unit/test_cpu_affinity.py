"""services/engine/cpu_affinity.py with real processes: what an engine replica does around vLLM's start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.engine import cpu_affinity
from services.engine.vllm_compat import WORKER_PROCESS_TITLE

EVERY = os.sched_getaffinity(0)
TWO_CORES = pytest.mark.skipif(len(EVERY) < 2, reason="needs two cores to keep apart")


def test_vllm_leaves_the_last_core_to_other_processes():
    assert cpu_affinity.reserved_cpus({0, 1, 2, 3}) == {3}
    assert cpu_affinity.reserved_cpus({4, 7}) == {7}
    assert cpu_affinity.reserved_cpus({0}) is None


def _child(*, worker: bool = False, bind_to: set[int] | None = None) -> subprocess.Popen[bytes]:
    """A process that waits: vLLM's engine core, or (with its title) a worker, bound or not."""
    code = "import os, sys, time, setproctitle\n"
    if worker:
        code += f"setproctitle.setproctitle({WORKER_PROCESS_TITLE!r})\n"
    if bind_to is not None:
        code += f"os.sched_setaffinity(0, {sorted(bind_to)})\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


@TWO_CORES
def test_the_engine_starts_on_every_core_and_what_vllm_did_not_bind_comes_back(monkeypatch):
    platform = cpu_affinity.reserved_cpus(EVERY)
    assert platform is not None
    compute = EVERY - platform
    monkeypatch.setenv(cpu_affinity.PLATFORM_CPUS_ENV, cpu_affinity.env_value(platform))
    before = os.sched_getaffinity(0)
    children = []
    try:
        with cpu_affinity.on_cpus(platform):  # as Ray's processes start
            with cpu_affinity.engine_start():
                assert os.sched_getaffinity(0) == EVERY  # vLLM sees every core when it binds
                children = [_child(), _child(worker=True, bind_to=compute), _child(worker=True)]
            assert os.sched_getaffinity(0) == platform  # the replica itself, back with the platform
        engine_core, bound_worker, unbound_worker = children
        assert os.sched_getaffinity(engine_core.pid) == platform
        assert os.sched_getaffinity(bound_worker.pid) == compute  # where vLLM bound it
        assert os.sched_getaffinity(unbound_worker.pid) == EVERY  # VLLM_CPU_OMP_THREADS_BIND=nobind
    finally:
        for child in children:
            child.kill()
            child.wait()
        os.sched_setaffinity(0, before)


def test_without_platform_cores_nothing_moves(monkeypatch):
    monkeypatch.delenv(cpu_affinity.PLATFORM_CPUS_ENV, raising=False)
    with cpu_affinity.engine_start():
        assert os.sched_getaffinity(0) == EVERY
    assert os.sched_getaffinity(0) == EVERY
