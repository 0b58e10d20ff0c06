"""The adapter checks on their own (services/engine/adapter_files.py), on PEFT adapters made for the embedded
model and on broken ones; the live behaviour is in tests/live/two_replicas/test_lora.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from services.core.settings import Settings
from services.engine.adapter_files import (
    AdapterError,
    BaseShape,
    check_adapter,
    list_adapters,
    safetensors_shapes,
    snapshot_and_check,
)
from services.models.embedded import ensure_embedded_model
from testkit.lora_adapters import BASE_MODEL, make_adapters, make_missing_weights_adapter, make_wrong_base_adapter


@pytest.fixture(scope="module")
def base() -> BaseShape:
    model = ensure_embedded_model(BASE_MODEL, Settings().cache_dir)
    return BaseShape.from_config(json.loads((Path(model) / "config.json").read_text()))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(root, Settings().cache_dir, {"r8": 8, "r32": 32})
    make_wrong_base_adapter(root / "wrong-base")
    make_missing_weights_adapter(root / "no-weights")
    return root


def test_peft_adapters_for_the_base_pass_with_their_rank(made, base):
    assert check_adapter(made / "r8", base, max_rank=16) == 8
    assert check_adapter(made / "r32", base, max_rank=32) == 32
    shapes = safetensors_shapes(made / "r8" / "adapter_model.safetensors")
    assert len(shapes) == 30 * 4 * 2  # 30 layers, q/k/v/o, A and B


@pytest.mark.parametrize(
    ("name", "max_rank", "reason"),
    [
        ("r32", 16, "rank 32 is above the catalog's lora.max_lora_rank 16"),
        ("wrong-base", 64, "an adapter of another base model?"),
        ("no-weights", 64, "adapter_model.safetensors is missing"),
    ],
)
def test_adapters_that_do_not_fit_are_refused_with_the_reason(made, base, name, max_rank, reason):
    with pytest.raises(AdapterError, match=reason.replace("?", r"\?")):
        check_adapter(made / name, base, max_rank)


def test_damaged_files_are_refused_not_crashed_on(made, base, tmp_path):
    def variant(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(made / "r8", target)
        return target

    garbage = variant("garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"\xff" * 7)
    huge_header = variant("huge-header")
    (huge_header / "adapter_model.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    bad_config = variant("bad-config")
    (bad_config / "adapter_config.json").write_text("{not json")
    dora = variant("dora")
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True}))
    pickled = variant("pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    for directory, reason in [
        (garbage, "not a safetensors file"),
        (huge_header, "implausible header"),
        (bad_config, "not valid JSON"),
        (dora, "DoRA"),
        (pickled, "pickled"),
    ]:
        with pytest.raises(AdapterError, match=reason):
            check_adapter(directory, base, 64)


def test_listing_names_adapters_by_directory_and_refuses_clashes(made, tmp_path):
    root = tmp_path / "dir"
    root.mkdir()
    for name in ("sql", "default", "bad name", ".hidden"):
        shutil.copytree(made / "r8", root / name)
    (root / "README.md").write_text("not an adapter")
    found, refused = list_adapters(root, reserved=["default", "smollm2"])
    assert set(found) == {"sql"} and set(refused) == {"default", "bad name"}
    assert "already a model" in refused["default"]
    assert list_adapters(tmp_path / "not-mounted-yet", reserved=[]) == ({}, {})


def test_a_snapshot_is_a_checked_copy_and_a_changed_adapter_gets_a_new_one(made, base, tmp_path):
    source = tmp_path / "dir" / "sql"
    shutil.copytree(made / "r8", source)
    snapshots = tmp_path / "snapshots"
    (first,) = list_adapters(source.parent, [])[0].values()
    checked = snapshot_and_check(first, snapshots, base, 16)
    assert checked.path.parent == snapshots and checked.rank == 8
    assert sorted(p.name for p in checked.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    shutil.copy(made / "r32" / "adapter_model.safetensors", source / "adapter_model.safetensors")
    os.utime(source / "adapter_model.safetensors", ns=(1, 1))
    (changed,) = list_adapters(source.parent, [])[0].values()
    assert changed.fingerprint != first.fingerprint
    with pytest.raises(AdapterError, match="rank 32"):
        snapshot_and_check(changed, snapshots, base, 16)
    assert checked.path.is_dir() and list(snapshots.iterdir()) == [checked.path]  # a refused copy is removed
    again = snapshot_and_check(first, snapshots, base, 32)
    assert again.path != checked.path  # the same files again: a snapshot of its own, never shared
