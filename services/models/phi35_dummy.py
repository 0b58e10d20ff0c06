"""Phi-3.5-shaped model directories with no weights (serve them with `load_format: dummy`): the real
architecture configs of Phi-3.5-mini, -MoE and -vision, an offline byte-level BPE tokenizer of the
same vocabulary size with Phi-3's special tokens and chat template, and for the vision shape the
project's own offline processor (`services/models/phi3v_processing.py`) as the directory's remote code.
Nothing is downloaded. Used at full size for GPU runs (`loadtests/gpu/make_phi35.py`) and at tiny
size for the CPU test models (`services/models/generated.py`).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

VOCAB = 32064
SPECIALS = [
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
]
IMAGE_TOKEN_ID = 32044  # "<|image|>" in Phi-3.5-vision's vocabulary; vLLM's Phi3V hard-codes the id
MINI = {  # microsoft/Phi-3.5-mini-instruct's config.json, less the auto_map
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": VOCAB,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.0 + i / 47 for i in range(48)]},
    "sliding_window": 262144,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "pad_token_id": 32000,
    "torch_dtype": "bfloat16",
}
MOE = {  # microsoft/Phi-3.5-MoE-instruct's config.json (41.9B parameters, 6.6B active), less the auto_map
    "architectures": ["PhiMoEForCausalLM"],
    "model_type": "phimoe",
    "hidden_size": 4096,
    "intermediate_size": 6400,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 16,
    "num_experts_per_tok": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "longrope",
        "short_factor": [1.0] * 64,
        "long_factor": [1.0 + i / 63 for i in range(64)],
        "short_mscale": 1.243163121016122,
        "long_mscale": 1.243163121016122,
        "original_max_position_embeddings": 4096,
    },
    "sliding_window": 131072,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "attention_bias": True,
    "lm_head_bias": True,
    "attention_dropout": 0.0,
    "input_jitter_noise": 0.01,
    "router_jitter_noise": 0.01,
    "router_aux_loss_coef": 0.0,
    "output_router_logits": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "torch_dtype": "bfloat16",
}
VISION = {  # microsoft/Phi-3.5-vision-instruct's config.json (4.2B parameters) on Phi-3's own config class:
    # the hub's model_type "phi3_v" needs its remote configuration code; vLLM reads the same fields either way.
    **MINI,
    "architectures": ["Phi3VForCausalLM"],
    "eos_token_id": 2,
    "embd_layer": {
        "embedding_cls": "image",
        "hd_transform_order": "sub_glb",
        "projection_cls": "mlp",
        "use_hd_transform": True,
        "with_learnable_separator": True,
    },
    "img_processor": {
        "image_dim_out": 1024,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": 144,
    },
}
SHAPES = {"mini": MINI, "moe": MOE, "vision": VISION}
NUM_CROPS = 4  # Phi-3.5-vision's preprocessor_config.json (its card: 4 for multi-frame, 16 for one image)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build(
    out: Path, shape: str = "mini", config_overrides: dict[str, Any] | None = None, num_crops: int = NUM_CROPS
) -> Path:
    """Write the directory for `shape`; `config_overrides` shrink it (the tiny CPU test models)."""
    out.mkdir(parents=True, exist_ok=True)
    config = {**SHAPES[shape], **(config_overrides or {})}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(out)
    if "img_processor" in config:
        write_vision_processor(out, num_crops)
    return out


def write_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

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
    specials[IMAGE_TOKEN_ID - 32000] = "<|image|>"
    for token in specials:
        vocab[token] = len(vocab)
    assert len(vocab) == VOCAB
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>", *specials]]
    )
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<unk>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 131072,
                "add_bos_token": False,
                "add_eos_token": False,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=1,
        )
    )


def write_vision_processor(out: Path, num_crops: int) -> None:
    """The offline Phi-3.5-vision processor as this directory's remote code (load with trust_remote_code)."""
    from services.models import phi3v_processing

    shutil.copyfile(phi3v_processing.__file__, out / "processing_phi3_v.py")
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "auto_map": {
                    "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                    "AutoImageProcessor": "processing_phi3_v.Phi3VImageProcessor",
                },
                "image_processor_type": "Phi3VImageProcessor",
                "processor_class": "Phi3VProcessor",
                "num_crops": num_crops,
                "image_mean": phi3v_processing.CLIP_MEAN,
                "image_std": phi3v_processing.CLIP_STD,
                "do_convert_rgb": True,
            },
            indent=1,
        )
    )
