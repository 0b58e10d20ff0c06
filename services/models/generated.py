"""Tiny random-weight checkpoints of the production architecture families, generated from
configs (seconds each, fixed seed), so the MoE and vision code paths run through the real vLLM
engine on a CPU with nothing downloaded.

- tiny-phimoe: PhiMoE (Phi-3.5-MoE's family): 2 layers, 4 experts, top-2, longrope.
- tiny-phi3v: Phi-3.5-vision itself (Phi3V): its real CLIP ViT-L/14-336 image tower cut to one layer,
  a 2-layer Phi-3 text model, and the project's offline Phi-3.5-vision processor with one crop
  (313 tokens per image). No weights: serve it with `load_format: dummy`.

PhiMoE takes a tokenizer from the embedded SmolLM2 GGUF with Phi-3 chat tokens added, and a Phi-3
chat template; Phi3V needs Phi-3's own vocabulary layout (`<|image|>` is id 32044) and takes the
offline one of `services/models/phi35_dummy.py`. Random weights produce meaningless text: tests check
structure only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.models.cache import build_once
from services.models.embedded import ensure_embedded_model

RECIPE_VERSION = "1"
SEED = 1234
PHI3_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def _tokenizer(cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model("smollm2-135m-instruct", cache_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": PHI3_TOKENS})
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

    tokenizer = _tokenizer(cache_dir)
    head_dim = 32  # vLLM's CPU attention supports 32, 64, 80, ... only
    config = PhimoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=8192,
        original_max_position_embeddings=2048,
        rope_scaling={
            "rope_type": "longrope",
            "short_factor": [1.0] * (head_dim // 2),
            "long_factor": [1.5] * (head_dim // 2),
            "short_mscale": 1.0,
            "long_mscale": 1.0,
            "original_max_position_embeddings": 2048,
            "rope_theta": 10000.0,
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    PhimoeForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    _set_architecture(out, "PhiMoEForCausalLM")


TINY_PHI3V = {  # overrides of Phi-3.5-vision's config: a 2-layer text model, CLIP cut after its first layer
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "original_max_position_embeddings": 2048,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 16, "long_factor": [1.5] * 16},
    "sliding_window": None,
    "img_processor": {
        "image_dim_out": 1024,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 144,
        "layer_idx": 0,
    },
}


def build_tiny_phi3v(out: Path, cache_dir: Path) -> None:
    from services.models.phi35_dummy import build

    build(out, "vision", config_overrides=TINY_PHI3V, num_crops=1)


GENERATED_MODELS: dict[str, Callable[[Path, Path], None]] = {
    "tiny-phimoe": build_tiny_phimoe,
    "tiny-phi3v": build_tiny_phi3v,
}


def ensure_generated_model(name: str, cache_dir: Path) -> Path:
    """The directory of generated model `name`, built on first use."""
    if name not in GENERATED_MODELS:
        raise ValueError(f"unknown generated model {name!r}; known: {', '.join(sorted(GENERATED_MODELS))}")

    def build(out: Path) -> None:
        print(f"[slmserve] generating test model {name}", flush=True)
        GENERATED_MODELS[name](out, cache_dir)

    return build_once(cache_dir / "models" / name, _recipe_version(), build)


def _recipe_version() -> str:
    """Bumped by hand for a recipe change; the offline processor's source is part of the recipe, since
    a generated vision directory carries a copy of it."""
    from services.models import phi3v_processing

    digest = hashlib.sha256(Path(phi3v_processing.__file__).read_bytes()).hexdigest()[:12]
    return f"{RECIPE_VERSION}-{digest}"
