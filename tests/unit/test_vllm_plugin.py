"""slmserve's vLLM plugin (services/engine/vllm_plugin.py) on vLLM's own CPU LoRA ops."""

from __future__ import annotations

import torch

from services.engine import vllm_compat, vllm_plugin


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
