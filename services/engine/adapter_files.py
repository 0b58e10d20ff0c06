"""LoRA adapters in a directory, checked before any engine sees them (vLLM-free).

Layout (NIM's): `adapters_dir/<name>/adapter_config.json` plus `adapter_model.safetensors`, as PEFT
saves them; the subdirectory's name is the served model name. An adapter is copied into a
replica-private snapshot and checked there, so the engine only ever reads files that were checked
and cannot change under it (vLLM reloads an adapter from its path whenever its cache evicted it).

Checked because vLLM is not: an adapter whose shapes fit no layer of the base loads "successfully"
and is silently ignored, and one that fails inside a batch kills the engine core. So every tensor
must name a known module of a base layer and have that module's shape at a rank within the
engine's `max_lora_rank`. Pickled weights (`adapter_model.bin`) are refused: loading them runs code.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TENSOR = re.compile(r"\blayers\.(\d+)\.(?:[A-Za-z0-9_]+\.)*?([A-Za-z0-9_]+)\.lora_([AB])\.weight$")
MAX_HEADER_BYTES = 64 * 2**20


class AdapterError(ValueError):
    """Why an adapter is left out, fit for a log line."""


@dataclass(frozen=True)
class BaseShape:
    """The base model's dimensions that LoRA tensors must fit (from its Hugging Face config)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BaseShape:
        config = config.get("text_config") or config
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            hidden,
            heads,
            int(config.get("num_key_value_heads") or heads),
            int(config.get("head_dim") or hidden // heads),
            int(config["intermediate_size"]),
            int(config["num_hidden_layers"]),
        )

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each LoRA-able linear layer, under the names both the
        Llama and the Phi-3 families use (Phi-3 packs q/k/v and gate/up)."""
        q, kv, hidden, inner = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.hidden_size,
            self.intermediate_size,
        )
        return {
            "q_proj": (hidden, q),
            "k_proj": (hidden, kv),
            "v_proj": (hidden, kv),
            "o_proj": (q, hidden),
            "qkv_proj": (hidden, q + 2 * kv),
            "gate_proj": (hidden, inner),
            "up_proj": (hidden, inner),
            "gate_up_proj": (hidden, 2 * inner),
            "down_proj": (inner, hidden),
        }


@dataclass(frozen=True)
class Adapter:
    name: str
    source: Path  # the directory in adapters_dir
    fingerprint: str  # changes whenever the adapter's files do


@dataclass(frozen=True)
class CheckedAdapter:
    name: str
    path: Path  # the checked snapshot the engine loads
    rank: int
    fingerprint: str


def fingerprint(directory: Path) -> str:
    """Names, sizes and modification times of the adapter's files (cheap: no file is read)."""
    digest = hashlib.blake2b(digest_size=8)
    for file in sorted(directory.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def list_adapters(adapters_dir: Path, reserved: Iterable[str]) -> tuple[dict[str, Adapter], dict[str, str]]:
    """Adapter directories by name, and the names left out with why. A missing directory holds none
    (a volume that is not mounted yet must not stop the base model); hidden entries are skipped
    (Kubernetes volumes keep `..data` links there)."""
    found: dict[str, Adapter] = {}
    refused: dict[str, str] = {}
    reserved = set(reserved)
    if not adapters_dir.is_dir():
        return found, refused
    for entry in sorted(adapters_dir.iterdir()):
        name = entry.name
        if name.startswith(".") or not entry.is_dir():
            continue
        if not _NAME.match(name):
            refused[name] = "the directory name is not a valid model name (letters, digits, '.', '_', '-')"
        elif name in reserved:
            refused[name] = "the name is already a model or alias of the catalog"
        else:
            try:
                found[name] = Adapter(name, entry, fingerprint(entry))
            except OSError as error:
                refused[name] = f"cannot be read: {error.strerror or error}"
    return found, refused


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header (8-byte length, then JSON), no tensor read."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise AdapterError(f"{path.name} is not a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise AdapterError(f"{path.name} has an implausible header ({length} bytes)")
        try:
            header = json.loads(file.read(length))
        except (ValueError, UnicodeDecodeError):
            raise AdapterError(f"{path.name} is not a safetensors file") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path.name} is not a safetensors file")
    return {
        key: value.get("shape", [])
        for key, value in header.items()
        if key != "__metadata__" and isinstance(value, dict)
    }


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{CONFIG_FILE} is missing") from None
    except (ValueError, UnicodeDecodeError):
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters are not supported by the engine")
    return config


def check_adapter(directory: Path, base: BaseShape, max_rank: int) -> int:
    """The adapter's rank, if every tensor fits the base model; AdapterError otherwise."""
    _read_config(directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise AdapterError("adapter_model.bin is pickled and never loaded; save with safe_serialization=True")
        raise AdapterError(f"{WEIGHTS_FILE} is missing")
    shapes = safetensors_shapes(weights)
    if not shapes:
        raise AdapterError(f"{WEIGHTS_FILE} holds no tensors")
    modules = base.module_shapes()
    rank = 0
    for key, shape in shapes.items():
        match = _TENSOR.search(key)
        if match is None:
            raise AdapterError(f"tensor {key!r} is not a LoRA weight of a decoder layer")
        layer, module, side = int(match.group(1)), match.group(2), match.group(3)
        if module not in modules:
            raise AdapterError(f"tensor {key!r} targets {module!r}, which the engine does not adapt")
        if layer >= base.num_layers:
            raise AdapterError(f"tensor {key!r} is for layer {layer}; the base model has {base.num_layers}")
        in_features, out_features = modules[module]
        if len(shape) != 2:
            raise AdapterError(f"tensor {key!r} has shape {shape}, not a matrix")
        module_rank, width = (shape[0], shape[1]) if side == "A" else (shape[1], shape[0])
        expected = in_features if side == "A" else out_features
        if width != expected:
            raise AdapterError(
                f"tensor {key!r} has shape {shape}; the base model's {module} needs {expected} "
                f"there (an adapter of another base model?)"
            )
        rank = max(rank, module_rank)
    if rank > max_rank:
        raise AdapterError(f"rank {rank} is above the catalog's lora.max_lora_rank {max_rank}")
    return rank


def snapshot_and_check(adapter: Adapter, snapshots_dir: Path, base: BaseShape, max_rank: int) -> CheckedAdapter:
    """Copy the adapter's files into a new directory of its own under `snapshots_dir` (never reused,
    so deleting a withdrawn one cannot touch a served one) and check the copy."""
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix=f"{adapter.name}-{adapter.fingerprint}-", dir=snapshots_dir))
    try:
        for file in (CONFIG_FILE, WEIGHTS_FILE, "adapter_model.bin"):  # .bin only to name it in the refusal
            if (adapter.source / file).is_file():
                shutil.copy2(adapter.source / file, target / file)
        rank = check_adapter(target, base, max_rank)
    except OSError as error:
        shutil.rmtree(target, ignore_errors=True)
        raise AdapterError(f"cannot be read: {error.strerror or error}") from None
    except AdapterError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return CheckedAdapter(adapter.name, target, rank, adapter.fingerprint)
