"""services/engine/cpu_affinity.py with real processes: a local CPU run's platform cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.engine import cpu_affinity

EVERY = os.sched_getaffinity(0)


def test_vllm_leaves_the_last_core_to_other_processes():
    assert cpu_affinity.reserved_cpus({0, 1, 2, 3}) == {3}
    assert cpu_affinity.reserved_cpus({4, 7}) == {7}
    assert cpu_affinity.reserved_cpus({0}) is None


def _affinity_of_a_child() -> set[int]:
    code = "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(output))


@pytest.mark.skipif(len(EVERY) < 2, reason="needs two cores to keep apart")
def test_ray_starts_on_the_platform_core_and_an_engine_replica_takes_every_core_back(monkeypatch):
    platform = cpu_affinity.reserved_cpus(EVERY)
    assert platform is not None
    monkeypatch.setenv(cpu_affinity.PLATFORM_CPUS_ENV, cpu_affinity.env_value(platform))
    before = os.sched_getaffinity(0)
    try:
        with cpu_affinity.on_cpus(platform):  # as start_local starts Ray: what it starts inherits the core
            assert _affinity_of_a_child() == platform
            cpu_affinity.place_engine_replica("engine")  # as an engine replica, one of those, does first
            assert os.sched_getaffinity(0) == EVERY
            assert _affinity_of_a_child() == EVERY  # vLLM's engine core, where vLLM would put it
        assert os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.skipif(len(EVERY) < 2, reason="needs two cores to keep apart")
def test_a_side_model_starts_on_every_core_then_moves_to_the_platform_with_its_processes(monkeypatch):
    platform = cpu_affinity.reserved_cpus(EVERY)
    assert platform is not None
    monkeypatch.setenv(cpu_affinity.PLATFORM_CPUS_ENV, cpu_affinity.env_value(platform))
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the catalog's env wins over the defaults
    before = os.sched_getaffinity(0)
    try:
        with cpu_affinity.on_cpus(platform):
            cpu_affinity.place_engine_replica("platform")
            assert os.sched_getaffinity(0) == EVERY  # it starts where the engines start
            engine_core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # as vLLM's
            try:
                cpu_affinity.settle_engine_replica("platform")
                assert os.sched_getaffinity(0) == platform
                assert os.sched_getaffinity(engine_core.pid) == platform  # what it started moved too
                assert _affinity_of_a_child() == platform  # and what it starts later
            finally:
                engine_core.kill()
                engine_core.wait()
        assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # vLLM's binding would leave it no core
        assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        cpu_affinity.keep_this_process_on(before)  # every thread: the placement moved them all


def test_without_platform_cores_nothing_moves(monkeypatch):
    monkeypatch.delenv(cpu_affinity.PLATFORM_CPUS_ENV, raising=False)
    with cpu_affinity.on_cpus(None):
        cpu_affinity.place_engine_replica("engine")
        assert os.sched_getaffinity(0) == EVERY
        cpu_affinity.place_engine_replica("platform")
        cpu_affinity.settle_engine_replica("platform")
        assert os.sched_getaffinity(0) == EVERY
