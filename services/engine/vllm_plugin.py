"""slmserve's vLLM general plugin (entry point `vllm.general_plugins` in pyproject.toml): fixes that must
run inside vLLM's own processes (engine core, workers), which import nothing of slmserve otherwise.
vLLM calls `load` once per process; everything here checks before it changes anything, so a vLLM
release that fixed the bug is left alone.

- CPU LoRA: vLLM's pure-PyTorch LoRA ops (the CPU backend's) index the stacked adapters with each
  token's adapter slot, and a base-model token's slot is -1, which PyTorch reads as "the last
  adapter". In a batch mixing base-model and adapter requests the base-model requests then get an
  adapter's output (found by tests/live/two_replicas/test_lora.py; vLLM pull request 48421 fixes it upstream).
  The GPU kernels skip slot -1 themselves.
- CPU idle wakeups: every gloo process group gets a transport device of its own, each device runs a
  `gloo_tcp_loop` thread whose epoll_wait times out every 10 ms, and a vLLM CPU worker makes 13 gloo
  groups (the world's and two per parallel dimension, even at world size 1). An idle worker so woke
  1,300 times a second, about 0.015 of a core, on the core its engine computes on. The groups of a
  process share one device instead: one loop thread (gloo devices are made to carry many contexts).
- CPU busy-waiting: a reader of vLLM's shared-memory queues (the engine core awaiting each step's
  output from its worker, the worker awaiting the next step) spins on `sched_yield` for a second after
  each read before it sleeps on the queue's notify socket. While a model decodes, the engine core so
  takes a whole core (90 % measured) that the step does not need: on a CPU node, the core the
  platform's processes and the engine's own frontend share. Readers here wait on that socket, which
  the writer pings on every write, parked a millisecond at a time within the window (a ping can be
  lost; vLLM's idle wait, after the window, rechecks every 5 s): a CPU step takes tens of
  milliseconds.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import time
from typing import Any

from services.engine import vllm_compat

logger = logging.getLogger("vllm.slmserve")  # under vLLM's logger: logged as vLLM logs
_CPU_LORA_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")  # the sgmv_* ops call these


def _without_slot_minus_one(op: Any) -> Any:
    """The op with rows of slot -1 contributing nothing: their inputs zeroed, their slot clamped to 0."""

    @functools.wraps(op)
    def run(inputs: Any, weights: Any, output: Any, slots: Any, *args: Any, **kwargs: Any) -> Any:
        base_rows = slots < 0
        if not bool(base_rows.any()):
            return op(inputs, weights, output, slots, *args, **kwargs)
        keep = (~base_rows).to(inputs.dtype)
        keep = keep.unsqueeze(-1) if keep.shape[0] == inputs.shape[0] else keep.reshape(1, 1)
        return op(inputs * keep, weights, output, slots.clamp(min=0), *args, **kwargs)

    run.slmserve_masks_slot_minus_one = True  # type: ignore[attr-defined]
    return run


def cpu_lora_ops_apply_the_last_adapter_to_base_tokens(lora_ops: Any) -> bool:
    """Probe vLLM's torch bgmv_shrink: one token, one adapter of all ones, slot -1."""
    import torch

    output = torch.zeros(1, 2)
    lora_ops.bgmv_shrink(torch.ones(1, 2), torch.ones(1, 2, 2), output, torch.tensor([-1]), 1.0)
    return bool(output.abs().sum() > 0)


def mask_base_tokens_in_cpu_lora_ops() -> bool:
    """Patch the ops where vLLM looks them up (their module, the torch_ops package and the CPU punica
    wrapper's own imports); True if patched."""
    modules = vllm_compat.cpu_lora_op_modules()
    if modules is None:
        return False
    lora_ops = modules[0]
    if getattr(lora_ops.bgmv_shrink, "slmserve_masks_slot_minus_one", False):
        return True
    if not cpu_lora_ops_apply_the_last_adapter_to_base_tokens(lora_ops):
        return False
    for name in _CPU_LORA_OPS:
        fixed = _without_slot_minus_one(getattr(lora_ops, name))
        for module in modules:
            if hasattr(module, name):
                setattr(module, name, fixed)
    logger.info("slmserve: CPU LoRA ops patched so that base-model tokens get no adapter (vLLM PR 48421)")
    return True


def _gloo_groups_sharing_one_device(gloo: Any) -> Any:
    """A ProcessGroupGloo subclass whose groups made without options (as torch.distributed's
    new_group makes them) share one default device; groups given options keep theirs."""

    class OneDeviceGloo(gloo):  # type: ignore[misc]
        device: Any = None
        slmserve_one_device = True

        def __init__(self, store: Any, rank: int, size: int, *args: Any, **kwargs: Any) -> None:
            if args or set(kwargs) - {"timeout"}:
                super().__init__(store, rank, size, *args, **kwargs)
                return
            if OneDeviceGloo.device is None:
                OneDeviceGloo.device = gloo.create_default_device()
            options = gloo._Options()
            options._devices = [OneDeviceGloo.device]
            if "timeout" in kwargs:
                options._timeout = kwargs["timeout"]
            super().__init__(store, rank, size, options)

    OneDeviceGloo.__name__ = OneDeviceGloo.__qualname__ = gloo.__name__
    return OneDeviceGloo


def share_one_gloo_device() -> bool:
    """On the CPU platform, torch.distributed's gloo groups of this process share one device (before
    vLLM makes any); True if patched. Left alone where GLOO_SOCKET_IFNAME asks for a device per
    interface."""
    if not vllm_compat.on_cpu_platform() or os.environ.get("GLOO_SOCKET_IFNAME"):
        return False
    from torch.distributed import distributed_c10d

    gloo = getattr(distributed_c10d, "ProcessGroupGloo", None)
    if gloo is None:  # a torch built without gloo
        return False
    if not getattr(gloo, "slmserve_one_device", False):
        distributed_c10d.ProcessGroupGloo = _gloo_groups_sharing_one_device(gloo)
    return True


# The longest a reader parks on the notify socket within vLLM's busy-loop window: a ping can be lost
# (vLLM's own idle wait rechecks every 5 s for that reason), and here it then costs a millisecond.
PARK_MS = 1


def _parking_readers(spin_condition: Any) -> Any:
    """A SpinCondition subclass whose readers park on the notify socket instead of spinning: within
    vLLM's busy-loop window for at most PARK_MS at a time, after it as vLLM's idle wait does."""

    class ParkingSpinCondition(spin_condition):  # type: ignore[misc]
        slmserve_parks_readers = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.park_window_s: float = getattr(self, "busy_loop_s", 0)  # vLLM's busy-loop window (0 for a writer)
            self.busy_loop_s = 0  # so that vLLM's wait always waits on the socket

        def wait(self, timeout_ms: int | None = None) -> None:
            if time.monotonic() <= self.last_read + self.park_window_s:
                timeout_ms = PARK_MS if timeout_ms is None else min(timeout_ms, PARK_MS)
            super().wait(timeout_ms)

    ParkingSpinCondition.__name__ = ParkingSpinCondition.__qualname__ = spin_condition.__name__
    return ParkingSpinCondition


def queue_readers_park() -> bool:
    """On the CPU platform, readers of vLLM's shared-memory queues made from now on park instead of
    spinning; True if patched."""
    if not vllm_compat.on_cpu_platform():
        return False
    spin_condition = vllm_compat.shm_spin_condition()
    if spin_condition is None:
        return False
    if not getattr(spin_condition, "slmserve_parks_readers", False):
        module = importlib.import_module(spin_condition.__module__)
        setattr(module, spin_condition.__name__, _parking_readers(spin_condition))
    return True


def load() -> None:
    try:
        mask_base_tokens_in_cpu_lora_ops()
    except ImportError:  # a vLLM without these modules has nothing to fix here
        pass
    share_one_gloo_device()
    queue_readers_park()
