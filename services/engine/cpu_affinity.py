"""The platform off the model's cores, on a CPU node.

vLLM's CPU worker binds its compute threads to cores (OMP_PLACES, from the cores the process may use
when it starts) and reserves the last core for other processes. Bare `vllm serve` runs nothing else
there. slmserve adds Ray's daemons, Serve's controller, proxy and platform actors and HAProxy; left
free, the scheduler puts their wake-ups on the worker's core, and each one stalls a decode step
(issue 28: on 2 cores, one stream's inter-token p95 read 83-99 ms against bare vLLM's 69-71).

So a local CPU run starts Ray on the reserved core (every Ray process inherits it), and an engine
replica, which hosts vLLM's frontend as bare vLLM's API server does, moves itself back onto every
core before vLLM starts: vLLM's engine core and worker are then placed as under bare `vllm serve`
(the worker bound, or on every core where the catalog says `VLLM_CPU_OMP_THREADS_BIND: nobind`).
A model the catalog places on the platform (`cpu_placement: platform`, a small side model) moves
there with its engine core and worker once its engine runs: on 2 cores, two idle side models roaming
both cores cost the main model's throughput 1.5-13 % (issue 28, docs/benchmarks.md).
Linux only; a node of one core, or a GPU catalog, is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import psutil

PLATFORM_CPUS_ENV = "SLMSERVE_PLATFORM_CPUS"  # e.g. "1": set for a local CPU run's Ray processes


def reserved_cpus(allowed: set[int]) -> set[int] | None:
    """The cores vLLM's CPU worker leaves to other processes (one engine worker: the last core),
    or None where it leaves none (a single core)."""
    if len(allowed) < 2:
        return None
    return {max(allowed)}


def platform_cpus() -> set[int] | None:
    """This run's platform cores, where a local CPU run set them."""
    value = os.environ.get(PLATFORM_CPUS_ENV, "")
    return {int(cpu) for cpu in value.split(",")} if value else None


def env_value(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """The calling thread (and every process it starts meanwhile) on `cpus`; as before afterwards."""
    if cpus is None:  # a GPU catalog, one core, or not Linux (runtime decides)
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def keep_this_process_on(cpus: set[int] | None) -> None:
    """Every thread of this process, and what it starts later, on `cpus` (`slmserve serve` itself)."""
    if cpus is not None:
        _move(psutil.Process(), cpus)


def place_engine_replica(placement: Literal["engine", "platform"]) -> None:
    """In an engine replica, before vLLM starts: this process (vLLM's frontend, as bare `vllm serve`'s
    API server is) and what it starts on every core, so vLLM places its engine core and binds its
    worker as it would under bare `vllm serve`. A model placed on the platform starts on every core
    too (a start is CPU-bound and the models start side by side: started on the platform's one core,
    the suite's three-model application took 169 s to start instead of 82) and moves once vLLM runs
    (`settle_engine_replica`); its worker gets as many threads as the platform has cores, unbound
    (vLLM's own binding would size and pin them for the main model's cores)."""
    platform = platform_cpus()
    if platform is None:
        return
    _move(psutil.Process(), set(range(os.cpu_count() or 1)))  # the kernel keeps what the cpuset allows
    if placement == "platform":
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("OMP_NUM_THREADS", str(len(platform)))


def settle_engine_replica(placement: Literal["engine", "platform"]) -> None:
    """In an engine replica, once vLLM runs: a model placed on the platform moves there, this process
    and every process vLLM started (its engine core, its worker), every thread of each."""
    platform = platform_cpus()
    if platform is None or placement != "platform":
        return
    replica = psutil.Process()
    for process in [replica, *replica.children(recursive=True)]:
        try:
            _move(process, platform)
        except psutil.NoSuchProcess:  # ended meanwhile
            continue


def _move(process: psutil.Process, cpus: set[int]) -> None:
    """Every thread of `process` onto `cpus` (a process's affinity is its threads')."""
    for thread in process.threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
        except OSError:  # a thread that ended meanwhile
            continue
