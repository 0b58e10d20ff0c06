"""Where a catalog entry's weights come from: a local directory, an embedded or generated model, or a hub id."""

from __future__ import annotations

from pathlib import Path

from services.embedded import EMBEDDED_PREFIX, ensure_embedded_model
from services.testmodels import GENERATED_PREFIX, ensure_generated_model


def resolve_source(source: str, cache_dir: Path) -> str:
    """A path or hub id vLLM can load; embedded models are converted on first use."""
    if source.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded_model(source.removeprefix(EMBEDDED_PREFIX), cache_dir))
    if source.startswith(GENERATED_PREFIX):
        return str(ensure_generated_model(source.removeprefix(GENERATED_PREFIX), cache_dir))
    if source.startswith(("/", "./", "../", "~")):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        return str(path)
    return source  # a Hugging Face id; fetched (or found in HF_HOME) by vLLM itself
