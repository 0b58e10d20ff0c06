"""Engine profiles (NIM's idea): a model lists the engine setups it can run with (precision, tensor
parallelism, the GPU families they suit, throughput or latency), and each engine replica picks the
best one for the GPUs it finds. No vLLM and no GPU needed here: the hardware is a value, so the
choice is tested with a table and shown by `slmserve profiles list --gpu H100x2`.

Best = compatible (enough GPUs of enough memory, the listed family, bf16 from compute capability
8.0, fp8 from 8.9: Ada, Hopper and Blackwell have fp8 tensor cores), then fp8 over bf16, then throughput
profiles on the fewest GPUs (latency profiles only when pinned or when nothing else fits), then
catalog order. `SLMSERVE_PROFILE` pins a profile by name; a pin the hardware cannot run fails the
start with what is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FP8_MIN_COMPUTE_CAPABILITY = 8.9
BF16_MIN_COMPUTE_CAPABILITY = 8.0  # Ampere on
# Known GPUs for `--gpu NAMExCOUNT`: memory (GiB) and compute capability.
KNOWN_GPUS: dict[str, tuple[float, float]] = {
    "B200": (180, 10.0),
    "H200": (141, 9.0),
    "H100": (80, 9.0),
    "H20": (96, 9.0),
    "GH200": (96, 9.0),
    "L40S": (48, 8.9),
    "L4": (24, 8.9),
    "A100": (80, 8.0),
    "A10G": (24, 8.6),
    "A10": (24, 8.6),
    "T4": (16, 7.5),
}


class ProfileError(ValueError):
    """A profile that cannot run here, or an unknown one, with what is missing."""


@dataclass(frozen=True)
class Hardware:
    """The accelerators an engine replica sees (none: a CPU engine)."""

    gpu_name: str = ""
    gpu_count: int = 0
    memory_gib: float = 0.0  # per GPU
    compute_capability: float = 0.0

    @property
    def family(self) -> str:
        """The name's model part: 'NVIDIA H100 80GB HBM3' -> 'H100' (longest known match)."""
        tokens = re.findall(r"[A-Za-z0-9]+", self.gpu_name.upper())
        known = [name for name in KNOWN_GPUS if name in tokens]
        return max(known, key=len) if known else (tokens[-1] if tokens else "")

    def describe(self) -> str:
        if not self.gpu_count:
            return "no GPU (CPU engine)"
        return (
            f"{self.gpu_count}x {self.gpu_name} ({self.memory_gib:.0f} GiB, "
            f"compute capability {self.compute_capability:g})"
        )

    @classmethod
    def parse(cls, text: str) -> Hardware:
        """`H100x2`, `H200`, `L4x4`, or `cpu`."""
        match = re.fullmatch(r"([A-Za-z0-9]+?)(?:x(\d+))?", text.strip())
        if text.strip().lower() == "cpu":
            return cls()
        if match is None or match.group(1).upper() not in KNOWN_GPUS:
            raise ProfileError(f"unknown GPU {text!r}; known: {', '.join(KNOWN_GPUS)} (as NAME or NAMExCOUNT)")
        name = match.group(1).upper()
        memory, capability = KNOWN_GPUS[name]
        return cls(name, int(match.group(2) or 1), memory, capability)

    @classmethod
    def detect(cls) -> Hardware:
        """What torch sees in this process (an engine replica sees only the GPUs Ray gave it)."""
        try:
            import torch
        except ImportError:
            return cls()
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return cls()
        properties = torch.cuda.get_device_properties(0)
        return cls(
            properties.name,
            torch.cuda.device_count(),
            properties.total_memory / 2**30,
            float(f"{properties.major}.{properties.minor}"),
        )


def missing(profile: Any, hardware: Hardware) -> list[str]:
    """What `hardware` lacks to run `profile` (services.core.catalog.EngineProfile); empty if it can."""
    if not hardware.gpu_count:
        return ["a GPU (this engine runs on CPU)"]
    problems = []
    if hardware.gpu_count < profile.tensor_parallel_size:
        problems.append(f"{profile.tensor_parallel_size} GPUs (has {hardware.gpu_count})")
    if profile.gpus and hardware.family not in {name.upper() for name in profile.gpus}:
        problems.append(f"a GPU of {'/'.join(profile.gpus)} (has {hardware.family or hardware.gpu_name})")
    if profile.precision == "fp8" and hardware.compute_capability < FP8_MIN_COMPUTE_CAPABILITY:
        problems.append(
            f"fp8 tensor cores (compute capability >= {FP8_MIN_COMPUTE_CAPABILITY}, "
            f"has {hardware.compute_capability:g})"
        )
    if hardware.compute_capability < BF16_MIN_COMPUTE_CAPABILITY:  # fp8 profiles keep bf16 activations
        problems.append(
            f"bf16 (compute capability >= {BF16_MIN_COMPUTE_CAPABILITY:g}, has {hardware.compute_capability:g})"
        )
    if profile.min_gpu_memory_gib and hardware.memory_gib < profile.min_gpu_memory_gib:
        problems.append(f"{profile.min_gpu_memory_gib:g} GiB per GPU (has {hardware.memory_gib:.0f})")
    return problems


def _rank(indexed: tuple[int, Any]) -> tuple[int, int, int, int]:
    index, profile = indexed
    return (profile.precision != "fp8", profile.optimize != "throughput", profile.tensor_parallel_size, index)


def choose(profiles: list[Any], hardware: Hardware, pinned: str | None = None) -> Any | None:
    """The profile an engine on `hardware` runs: the pinned one (ProfileError if it cannot run), else
    the best compatible one; None when the model lists none or none fits (its own engine_args then)."""
    if pinned:
        by_name = {profile.name: profile for profile in profiles}
        if pinned not in by_name:
            raise ProfileError(
                f"SLMSERVE_PROFILE={pinned!r} is not a profile of this model; it has: {', '.join(by_name) or 'none'}"
            )
        problems = missing(by_name[pinned], hardware)
        if problems:
            raise ProfileError(
                f"profile {pinned!r} cannot run on {hardware.describe()}: it needs " + "; ".join(problems)
            )
        return by_name[pinned]
    fitting = [(index, profile) for index, profile in enumerate(profiles) if not missing(profile, hardware)]
    return min(fitting, key=_rank)[1] if fitting else None
