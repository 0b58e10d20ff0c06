"""Tiny LoRA adapters for the embedded SmolLM2, made with PEFT itself (fixed seeds), so the adapter
paths run through the real vLLM engine on a CPU with nothing downloaded.

Adapters are random (`init_lora_weights=False`: B is not zero), so each one moves the model's greedy
answer somewhere of its own, deterministically. Three broken kinds come with them, for the tests of
what a bad adapter must not do (take a replica down, appear in /v1/models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.models.embedded import ensure_embedded_model

BASE_MODEL = "smollm2-135m-instruct"
ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _save_adapter(model: Any, out: Path, rank: int, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=ATTENTION_MODULES,
        init_lora_weights=False,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    peft_model.unload()  # the base model comes back unchanged for the next adapter


def make_adapters(out_dir: Path, cache_dir: Path, ranks: dict[str, int], seed: int = 1234) -> dict[str, Path]:
    """One PEFT adapter per `name: rank` for the embedded model, each in `out_dir/name`."""
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(BASE_MODEL, cache_dir), dtype=torch.float32)
    made = {}
    for offset, (name, rank) in enumerate(sorted(ranks.items())):
        _save_adapter(base, out_dir / name, rank, seed + offset)
        made[name] = out_dir / name
    return made


def make_wrong_base_adapter(out: Path, seed: int = 99) -> Path:
    """A well-formed PEFT adapter for a different (tiny Llama) base: its shapes fit no SmolLM2 layer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    _save_adapter(other, out, 8, seed)
    return out


def make_missing_weights_adapter(out: Path) -> Path:
    """An adapter directory with its config but no weights file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ATTENTION_MODULES})
    )
    return out
