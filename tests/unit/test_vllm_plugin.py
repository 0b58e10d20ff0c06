"""slmserve's vLLM plugin (services/engine/vllm_plugin.py) on vLLM's own CPU LoRA ops, on
torch.distributed's gloo groups and on vLLM's shared-memory queues (the last two in processes of their
own, as a vLLM worker and engine core make them)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import torch

from services.engine import vllm_compat, vllm_plugin
from services.runtime import free_ports
from testkit.bare_vllm import SLMSERVE_PLUGIN, vllm_plugins_but_slmserves


def test_base_model_tokens_get_no_adapter_and_adapter_tokens_are_unchanged():
    modules = vllm_compat.cpu_lora_op_modules()
    assert modules is not None  # the CPU backend
    lora_ops = modules[0]
    original = lora_ops.bgmv_shrink
    inputs, weights = torch.randn(3, 4), torch.randn(2, 5, 4)  # 3 tokens, 2 adapter slots of rank 5
    slots = torch.tensor([1, -1, 0])
    expected = torch.zeros(3, 5)
    original(inputs, weights, expected, slots.clamp(min=0), 0.5)
    expected[1] = 0
    assert vllm_plugin.cpu_lora_ops_apply_the_last_adapter_to_base_tokens(lora_ops)  # vLLM 0.32's bug, as shipped
    try:
        assert vllm_plugin.mask_base_tokens_in_cpu_lora_ops()
        assert not vllm_plugin.cpu_lora_ops_apply_the_last_adapter_to_base_tokens(lora_ops)
        fixed = torch.zeros(3, 5)
        lora_ops.bgmv_shrink(inputs, weights, fixed, slots, 0.5)
        assert torch.equal(fixed, expected)
        grown = torch.ones(3, 4)
        lora_ops.bgmv_expand(torch.ones(3, 5), torch.ones(2, 4, 5), grown, slots, add_inputs=True)
        assert grown[1].eq(1).all() and grown[0].eq(6).all()  # the base token's row is untouched
        assert vllm_plugin.mask_base_tokens_in_cpu_lora_ops()  # a second load changes nothing
    finally:
        for module in modules:
            for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
                patched = getattr(module, name, None)
                if patched is not None and hasattr(patched, "__wrapped__"):
                    setattr(module, name, patched.__wrapped__)


_GROUPS = """
import os, sys, torch, torch.distributed as dist
from services.engine import vllm_plugin
if sys.argv[3] == "plugin":
    assert vllm_plugin.share_one_gloo_device()
rank, world = int(sys.argv[1]), 2
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=world)
groups = [dist.new_group([0, 1], backend="gloo") for _ in range(6)]  # as vLLM's parallel dimensions
groups += [dist.new_group([r], backend="gloo") for r in range(world)]
for group in groups[:6]:
    summed = torch.full((4,), float(rank + 1))
    dist.all_reduce(summed, group=group)
    assert summed.tolist() == [3.0] * 4, summed
dist.barrier()
task = f"/proc/{os.getpid()}/task"
print(sum(open(f"{task}/{t}/comm").read().strip() == "gloo_tcp_loop" for t in os.listdir(task)))
"""


def _gloo_loop_threads(mode: str) -> list[int]:
    """Two real ranks making vLLM's kind of group set; each rank's count of gloo loop threads."""
    port = free_ports(1)[0]
    ranks = [
        subprocess.Popen([sys.executable, "-c", _GROUPS, str(rank), str(port), mode], stdout=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    return [int(output.split()[-1]) for output in outputs]


def test_the_gloo_groups_of_a_process_share_one_loop_thread_and_still_reduce_across_ranks():
    assert _gloo_loop_threads("plain") == [8, 8]  # torch as shipped: one device each for the world and 7 groups
    assert _gloo_loop_threads("plugin") == [1, 1]


def test_bare_vllm_loads_every_general_plugin_but_slmserves():
    installed = {plugin.name: plugin.module for plugin in entry_points(group="vllm.general_plugins")}
    assert SLMSERVE_PLUGIN in installed.values()  # pyproject.toml's entry point, as bare_vllm names it
    assert set(vllm_plugins_but_slmserves().split(",")) == {
        name for name, module in installed.items() if module != SLMSERVE_PLUGIN
    }


_QUEUE_READER = """
import multiprocessing, sys, time
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue


def read(handle, mode, out):
    from services.engine import vllm_plugin
    if mode == "plugin":
        assert vllm_plugin.queue_readers_park()
    queue = MessageQueue.create_from_handle(handle, 0)
    queue.wait_until_ready()
    queue.dequeue()  # a reader busy-loops for a while after each read, as between two engine steps
    started = time.process_time()
    message = queue.dequeue()
    out.put((message, time.process_time() - started))


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    writer, out = MessageQueue(1, 1, max_chunk_bytes=1024, max_chunks=2), context.Queue()
    reader = context.Process(target=read, args=(writer.export_handle(), sys.argv[1], out))
    reader.start()
    writer.wait_until_ready()
    writer.enqueue("first")
    time.sleep(0.5)  # a step's worth of waiting for the next message
    writer.enqueue("second")
    message, cpu_s = out.get(timeout=60)
    reader.join(60)
    writer.shutdown()
    print(message, cpu_s)
"""


def _reader_cpu_s(mode: str, tmp_path) -> tuple[str, float]:
    """A real vLLM shared-memory queue across two processes: the reader's CPU seconds while it waits
    0.5 s for its second message, and that message."""
    script = tmp_path / "queue_reader.py"
    script.write_text(_QUEUE_READER)
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    message, cpu_s = done.stdout.split()[-2:]
    return message, float(cpu_s)


def test_a_queue_reader_waits_for_the_next_message_without_spinning(tmp_path):
    message, spinning_s = _reader_cpu_s("plain", tmp_path)
    assert message == "second" and spinning_s > 0.1  # vLLM as shipped: the wait is spent on sched_yield
    message, sleeping_s = _reader_cpu_s("plugin", tmp_path)
    assert message == "second" and sleeping_s < 0.03  # woken by the writer's ping, on time
