"""A Phi-3.5-mini-, -MoE- or -vision-instruct-shaped model directory with no weights (serve it with
`load_format: dummy`; the shapes live in `services/models/phi35_dummy.py`), and random LoRA adapters for the
mini shape. Nothing is downloaded.

    python -m loadtests.gpu.make_phi35 /tmp/phi35-vision --shape vision
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.models.phi35_dummy import SHAPES, build

__all__ = ["SHAPES", "build", "build_adapters"]

LORA_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # Phi-3's own (packed) linear layers


def build_adapters(out: Path, names: list[str], rank: int = 16, shape: str = "mini", seed: int = 0) -> list[Path]:
    """PEFT-layout LoRA adapters (random, bf16) for the shape, without PEFT (the GPU machine has none):
    adapter_config.json plus adapter_model.safetensors with PEFT's tensor names."""
    import torch
    from safetensors.torch import save_file

    config = SHAPES[shape]
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    qkv = hidden + 2 * config["num_key_value_heads"] * head_dim
    sizes = {
        "qkv_proj": (hidden, qkv),
        "o_proj": (hidden, hidden),
        "gate_up_proj": (hidden, 2 * inner),
        "down_proj": (inner, hidden),
    }
    made = []
    for offset, name in enumerate(names):
        generator = torch.Generator().manual_seed(seed + offset)
        tensors = {}
        for layer in range(config["num_hidden_layers"]):
            for module in LORA_MODULES:
                kind = "self_attn" if module in ("qkv_proj", "o_proj") else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{kind}.{module}"
                fan_in, fan_out = sizes[module]
                tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=generator) / fan_in**0.5).to(
                    torch.bfloat16
                )
                tensors[f"{prefix}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=generator) * 0.01).to(
                    torch.bfloat16
                )
        directory = out / name
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        (directory / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "task_type": "CAUSAL_LM",
                    "r": rank,
                    "lora_alpha": 2 * rank,
                    "lora_dropout": 0.0,
                    "target_modules": list(LORA_MODULES),
                    "bias": "none",
                    "fan_in_fan_out": False,
                    "use_dora": False,
                    "base_model_name_or_path": "microsoft/Phi-3.5-mini-instruct",
                },
                indent=1,
            )
        )
        made.append(directory)
    return made


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mini")
    args = parser.parse_args()
    print("model dir ready:", build(args.out, args.shape))
