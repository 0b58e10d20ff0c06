"""Tiny random-weight checkpoints of the production architecture families, generated from
configs (seconds each, fixed seed), so the MoE and vision code paths run through the real vLLM
engine on a CPU with nothing downloaded.

- tiny-phimoe: PhiMoE (Phi-3.5-MoE's family): 2 layers, 4 experts, top-2, longrope.
- tiny-idefics3: Idefics3 (SmolVLM's family; Phi-3.5-vision's processor is hub-only remote code,
  so it cannot be built offline): SigLIP-style encoder on 64 px images, 4 tokens per image.

Both share one tokenizer taken from the embedded SmolLM2 GGUF with Phi-3 chat tokens added, and
a Phi-3 chat template. Random weights produce meaningless text: tests check structure only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from services.embedded import ensure_embedded_model
from services.model_cache import build_once

GENERATED_PREFIX = "generated://"
RECIPE_VERSION = "1"
SEED = 1234
PHI3_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _tokenizer(cache_dir: Path, extra_tokens: list[str]):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model("smollm2-135m-instruct", cache_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": PHI3_TOKENS + extra_tokens})
    tokenizer.eos_token = "<|end|>"
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def _set_architecture(out: Path, architecture: str) -> None:
    # vLLM picks its native implementation by this name; transformers' own spelling for PhiMoE
    # ("PhimoeForCausalLM") makes vLLM fall back to its generic transformers backend.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = [architecture]
    config_path.write_text(json.dumps(config, indent=2))


def build_tiny_phimoe(out: Path, cache_dir: Path) -> None:
    import torch
    from transformers import PhimoeConfig, PhimoeForCausalLM

    tokenizer = _tokenizer(cache_dir, [])
    head_dim = 32  # vLLM's CPU attention supports 32, 64, 80, ... only
    config = PhimoeConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=8192, original_max_position_embeddings=2048,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * (head_dim // 2),
                      "long_factor": [1.5] * (head_dim // 2), "short_mscale": 1.0, "long_mscale": 1.0,
                      "original_max_position_embeddings": 2048, "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    PhimoeForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _set_architecture(out, "PhiMoEForCausalLM")


def build_tiny_idefics3(out: Path, cache_dir: Path) -> None:
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = _tokenizer(cache_dir, IDEFICS3_TOKENS)
    image_size, patch_size, scale_factor = 64, 16, 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2  # 4 tokens per image
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "max_position_embeddings": 2048,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size},
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    Idefics3ForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=image_seq_len, chat_template=PHI3_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    _set_architecture(out, "Idefics3ForConditionalGeneration")


GENERATED_MODELS: dict[str, Callable[[Path, Path], None]] = {
    "tiny-phimoe": build_tiny_phimoe,
    "tiny-idefics3": build_tiny_idefics3,
}


def ensure_generated_model(name: str, cache_dir: Path) -> Path:
    """The directory of generated model `name`, built on first use."""
    if name not in GENERATED_MODELS:
        raise ValueError(f"unknown generated model {name!r}; known: {', '.join(sorted(GENERATED_MODELS))}")

    def build(out: Path) -> None:
        print(f"[slmserve] generating test model {name}", flush=True)
        GENERATED_MODELS[name](out, cache_dir)

    return build_once(cache_dir / "models" / name, RECIPE_VERSION, build)
