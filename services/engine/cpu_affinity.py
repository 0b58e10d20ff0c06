"""The platform off the model's cores, on a CPU node.

vLLM's CPU worker binds its compute threads to cores (OMP_PLACES, from the cores the process may use
when it starts) and reserves the last core for "other processes": its engine core and the HTTP
frontend. On a local CPU run those others are slmserve's: Ray's daemons, Serve's actors, HAProxy,
the engine replica. Left free, the scheduler puts their wake-ups on the worker's core too, and
every one of them stalls a decode step (issue 28: on 2 cores, one stream's inter-token p95 read
83-99 ms against bare vLLM's 69-71; with the platform on the reserved core, 72-77).

So a local CPU run starts Ray on the reserved core (every Ray process inherits it), and an engine
replica lets its vLLM start on all cores, so that vLLM's worker binds where it would under bare
`vllm serve` (or, where the catalog says `VLLM_CPU_OMP_THREADS_BIND: nobind`, keeps every core),
then takes itself and vLLM's engine core back to the reserved core. Linux only; a
node of one core, or a GPU catalog, is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from services.engine.vllm_compat import WORKER_PROCESS_TITLE

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
    if cpus is None or not hasattr(os, "sched_setaffinity"):
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
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        _move(psutil.Process(), cpus)


@contextmanager
def engine_start() -> Iterator[None]:
    """Around vLLM's start in an engine replica: all cores while vLLM binds its workers, then this
    process and the processes vLLM did not bind back on the platform's cores."""
    platform = platform_cpus()
    if platform is None:
        yield
        return
    _move(psutil.Process(), set(range(os.cpu_count() or 1)))  # the kernel keeps what the cpuset allows
    try:
        yield
    finally:
        this = psutil.Process()
        for process in [this, *this.children(recursive=True)]:
            try:
                if WORKER_PROCESS_TITLE not in " ".join(process.cmdline()):  # workers keep vLLM's binding
                    _move(process, platform)
            except psutil.Error:
                continue


def _move(process: psutil.Process, cpus: set[int]) -> None:
    """Every thread of `process` onto `cpus` (a process's affinity is its threads')."""
    for thread in process.threads():
        try:
            os.sched_setaffinity(thread.id, cpus)
        except OSError:  # a thread that ended meanwhile
            continue

