"""The instance of instance.py, started once for the whole package and stopped after its last test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.settings import Settings
from testkit.lora_adapters import make_adapters, make_missing_weights_adapter, make_wrong_base_adapter
from testkit.serving import ServerProcess, catalog_variant, serving, wait_until_haproxy_follows_the_router

from .instance import ADAPTERS, MODEL, placed_by_haproxy, two_replicas_with_adapters, wait_until


@pytest.fixture(scope="package")
def adapters_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    spare = tmp_path_factory.mktemp("spare")
    cache = Settings().cache_dir
    make_adapters(root, cache, ADAPTERS)
    make_adapters(spare, cache, {"rank-64": 64, "delta-r8": 8}, seed=77)
    shutil.move(spare / "rank-64", root / "rank-64")
    shutil.move(spare / "delta-r8", root.parent / "delta-r8")  # added and removed by a test
    make_wrong_base_adapter(root / "wrong-base")
    make_missing_weights_adapter(root / "no-weights")
    shutil.copytree(root / "alpha-r8", root / "garbage")
    (root / "garbage" / "adapter_model.safetensors").write_bytes(b"\x00" * 40 + b"not a tensor file")
    return root


@pytest.fixture(scope="package")
def server(adapters_dir: Path) -> Iterator[ServerProcess]:
    with serving(catalog_variant("cpu", two_replicas_with_adapters(adapters_dir)), replicas=2) as running:
        wait_until(lambda: set(ADAPTERS) <= placed_by_haproxy(running))
        wait_until_haproxy_follows_the_router(running.base_url, MODEL)
        yield running
