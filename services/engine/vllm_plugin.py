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
"""

from __future__ import annotations

import functools
import logging
import os
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


def load() -> None:
    try:
        mask_base_tokens_in_cpu_lora_ops()
    except ImportError:  # a vLLM without these modules has nothing to fix here
        pass
    share_one_gloo_device()
