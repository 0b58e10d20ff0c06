"""A Phi-3.5-mini-instruct- or Phi-3.5-MoE-instruct-shaped model directory with no weights (serve
it with `load_format: dummy`): the real architecture config, and an offline byte-level BPE
tokenizer of the same vocabulary size with Phi-3's special tokens and chat template. Nothing is
downloaded.

    python -m loadtests.gpu.make_phi35 /tmp/phi35-moe --shape moe
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

VOCAB = 32064
SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
            "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
MINI = {  # microsoft/Phi-3.5-mini-instruct's config.json, less the auto_map
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": VOCAB,
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.0 + i / 47 for i in range(48)]},
    "sliding_window": 262144, "rms_norm_eps": 1e-05, "hidden_act": "silu", "attention_dropout": 0.0,
    "embd_pdrop": 0.0, "resid_pdrop": 0.0, "initializer_range": 0.02, "tie_word_embeddings": False,
    "use_cache": True, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000, "torch_dtype": "bfloat16",
}
MOE = {  # microsoft/Phi-3.5-MoE-instruct's config.json (41.9B parameters, 6.6B active), less the auto_map
    "architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe", "hidden_size": 4096, "intermediate_size": 6400,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 16,
    "num_experts_per_tok": 2, "vocab_size": VOCAB, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.0 + i / 63 for i in range(64)],
                     "short_mscale": 1.243163121016122, "long_mscale": 1.243163121016122,
                     "original_max_position_embeddings": 4096},
    "sliding_window": 131072, "rms_norm_eps": 1e-05, "hidden_act": "silu", "attention_bias": True,
    "lm_head_bias": True, "attention_dropout": 0.0, "input_jitter_noise": 0.01, "router_jitter_noise": 0.01,
    "router_aux_loss_coef": 0.0, "output_router_logits": False, "initializer_range": 0.02,
    "tie_word_embeddings": False, "use_cache": True, "bos_token_id": 1, "eos_token_id": 32000,
    "torch_dtype": "bfloat16",
}
SHAPES = {"mini": MINI, "moe": MOE}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build(out: Path, shape: str = "mini") -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(SHAPES[shape], indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [32007, 32000]}))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    for size in (2, 3, 4):  # fill to 32000 with letter n-grams, with and without a leading space
        for letters in itertools.product("abcdefghijklmnopqrstuvwxyz", repeat=size):
            for token in ("".join(letters), "\u0120" + "".join(letters)):
                if len(vocab) < 32000:
                    vocab.setdefault(token, len(vocab))
    specials = SPECIALS + [f"<|dummy{i}|>" for i in range(VOCAB - 32000 - len(SPECIALS))]
    for token in specials:
        vocab[token] = len(vocab)
    assert len(vocab) == VOCAB
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in ["<unk>", "<s>", "</s>", *specials]])
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|endoftext|>",
        "unk_token": "<unk>", "pad_token": "<|endoftext|>", "model_max_length": 131072, "add_bos_token": False,
        "add_eos_token": False, "chat_template": CHAT_TEMPLATE}, indent=1))
    return out


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
    sizes = {"qkv_proj": (hidden, qkv), "o_proj": (hidden, hidden), "gate_up_proj": (hidden, 2 * inner),
             "down_proj": (inner, hidden)}
    made = []
    for offset, name in enumerate(names):
        generator = torch.Generator().manual_seed(seed + offset)
        tensors = {}
        for layer in range(config["num_hidden_layers"]):
            for module in LORA_MODULES:
                kind = "self_attn" if module in ("qkv_proj", "o_proj") else "mlp"
                prefix = f"base_model.model.model.layers.{layer}.{kind}.{module}"
                fan_in, fan_out = sizes[module]
                tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
                                                      ).to(torch.bfloat16)
                tensors[f"{prefix}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=generator) * 0.01
                                                      ).to(torch.bfloat16)
        directory = out / name
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        (directory / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
            "target_modules": list(LORA_MODULES), "bias": "none", "fan_in_fan_out": False, "use_dora": False,
            "base_model_name_or_path": "microsoft/Phi-3.5-mini-instruct"}, indent=1))
        made.append(directory)
    return made


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mini")
    args = parser.parse_args()
    print("model dir ready:", build(args.out, args.shape))
