"""Catalog validation: every shipped catalog loads, and bad config fails with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli import main as cli_main
from services.core.catalog import CatalogError, load_catalog, parse_catalog
from services.core.settings import CATALOG_DIR, resolve_catalog_path
from testkit.live import TEST_CATALOG

MINIMAL = {"models": [{"name": "m", "source": "embedded://smollm2-135m-instruct"}]}


@pytest.mark.parametrize("path", [*sorted(CATALOG_DIR.glob("*.yaml")), TEST_CATALOG], ids=lambda p: p.stem)
def test_shipped_catalogs_validate(path: Path):
    catalog = load_catalog(path)
    assert catalog.models


def test_minimal_catalog_gets_defaults():
    entry = parse_catalog(MINIMAL).models[0]
    assert entry.deployment.num_replicas == 1
    assert entry.deployment_name == "engine-m"
    assert entry.modalities == ["text"]


def _error(data: dict) -> str:
    with pytest.raises(CatalogError) as raised:
        parse_catalog(data, "test.yaml")
    return str(raised.value)


def test_unknown_field_is_named():
    message = _error({"models": [{**MINIMAL["models"][0], "replicas": 2}]})
    assert "models.0.replicas" in message and "Extra inputs are not permitted" in message


def test_bad_type_is_named():
    message = _error({"models": [{**MINIMAL["models"][0], "deployment": {"max_ongoing_requests": "many"}}]})
    assert "models.0.deployment.max_ongoing_requests" in message


def test_missing_model_and_empty_catalog():
    assert "models.0.source" in _error({"models": [{"name": "m"}]})
    assert "models" in _error({"models": []})
    assert "models" in _error({})


def test_duplicate_names_and_aliases_rejected():
    entry = MINIMAL["models"][0]
    assert "used by both" in _error({"models": [entry, {**entry, "name": "n", "aliases": ["m"]}]})


def test_replicas_and_autoscaling_are_exclusive():
    deployment = {"num_replicas": 2, "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}
    assert "not both" in _error({"models": [{**MINIMAL["models"][0], "deployment": deployment}]})
    bad_bounds = {"autoscaling_config": {"min_replicas": 5, "max_replicas": 4}}
    assert "min_replicas" in _error({"models": [{**MINIMAL["models"][0], "deployment": bad_bounds}]})


def test_engine_args_may_not_override_the_model():
    assert "engine_args" in _error({"models": [{**MINIMAL["models"][0], "engine_args": {"model": "x"}}]})


def test_unknown_embedded_model():
    assert "unknown embedded model" in _error({"models": [{"name": "m", "source": "embedded://nope"}]})


def test_serve_options_follow_ray_names():
    catalog = parse_catalog(
        {
            "models": [
                {
                    **MINIMAL["models"][0],
                    "deployment": {
                        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4},
                        "ray_actor_options": {"num_gpus": 1, "num_cpus": 2},
                    },
                }
            ]
        }
    )
    options = catalog.models[0].deployment.to_serve_options()
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")


def test_cli_validate_reports_errors(tmp_path: Path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert cli_main(["catalog", "validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "m"}]}))
    assert cli_main(["catalog", "validate", str(bad)]) == 2
    assert "models.0.source" in capsys.readouterr().err


def test_catalog_names_resolve_to_shipped_files():
    assert resolve_catalog_path("cpu") == CATALOG_DIR / "cpu.yaml"
    assert resolve_catalog_path("./mine.yaml") == Path("./mine.yaml")


def test_multi_gpu_replicas_need_placement_bundles_and_ray_executor():
    entry = {
        "name": "moe",
        "source": "microsoft/Phi-3.5-MoE-instruct",
        "engine_args": {"tensor_parallel_size": 2},
        "deployment": {"ray_actor_options": {"num_gpus": 0}},
    }
    assert "placement_group_bundles" in _error({"models": [entry]})
    entry["deployment"]["placement_group_bundles"] = [{"CPU": 1, "GPU": 1}, {"GPU": 1}]
    assert "distributed_executor_backend" in _error({"models": [entry]})
    entry["engine_args"]["distributed_executor_backend"] = "ray"
    options = parse_catalog({"models": [entry]}).models[0].deployment.to_serve_options()
    assert options["placement_group_bundles"] == [{"CPU": 1, "GPU": 1}, {"GPU": 1}]


def test_image_limits_need_the_image_modality():
    entry = {**MINIMAL["models"][0], "engine_args": {"limit_mm_per_prompt": {"image": 2}}}
    assert "modalities" in _error({"models": [entry]})
    vision = parse_catalog({"models": [{**entry, "modalities": ["text", "image"]}]}).models[0]
    assert vision.max_images == 2
    assert parse_catalog(MINIMAL).models[0].max_images == 0


def test_unknown_generated_model_and_media_policy_fields():
    assert "unknown generated model" in _error({"models": [{"name": "m", "source": "generated://nope"}]})
    assert "media.max_image_bytes" in _error({**MINIMAL, "media": {"max_image_bytes": 0}})
    assert "media.allow_everything" in _error({**MINIMAL, "media": {"allow_everything": True}})


def test_production_catalog_encodes_gpu_sizing():
    catalog = load_catalog(resolve_catalog_path("phi35"))
    by_name = {entry.name: entry for entry in catalog.models}
    assert set(by_name) == {
        "microsoft/Phi-3.5-mini-instruct",
        "microsoft/Phi-3.5-MoE-instruct",
        "microsoft/Phi-3.5-vision-instruct",
    }
    moe = by_name["microsoft/Phi-3.5-MoE-instruct"]
    assert moe.parallel_size == 2 and moe.deployment.placement_group_strategy == "STRICT_PACK"
    vision = by_name["microsoft/Phi-3.5-vision-instruct"]
    assert vision.engine_args["trust_remote_code"] is True and vision.max_images == 4
    assert all(entry.deployment.autoscaling_config for entry in catalog.models)
    assert {entry.deployment_name for entry in catalog.models} == {
        "engine-microsoft-Phi-3.5-mini-instruct",
        "engine-microsoft-Phi-3.5-MoE-instruct",
        "engine-microsoft-Phi-3.5-vision-instruct",
    }


def test_lora_block_drives_the_engine_and_is_validated():
    entry = {**MINIMAL["models"][0], "lora": {"adapters_dir": "/adapters", "max_loras": 2, "max_lora_rank": 32}}
    parsed = parse_catalog({"models": [entry]}).models[0]
    assert parsed.vllm_engine_args() == {"enable_lora": True, "max_loras": 2, "max_lora_rank": 32}
    assert parsed.lora is not None and parsed.lora.refresh_s == 30
    assert "max_lora_rank must be one of" in _error(
        {"models": [{**entry, "lora": {"adapters_dir": "/a", "max_lora_rank": 12}}]}
    )
    assert "max_cpu_loras must be at least max_loras" in _error(
        {"models": [{**entry, "lora": {"adapters_dir": "/a", "max_loras": 4, "max_cpu_loras": 2}}]}
    )
    assert "models.0.lora.adapters_dir" in _error({"models": [{**entry, "lora": {"adapters_dir": ""}}]})
    assert "comes from the entry's `lora:` block" in _error(
        {"models": [{**MINIMAL["models"][0], "engine_args": {"enable_lora": True}}]}
    )


def test_a_local_ray_advertises_the_cpus_the_catalog_asks_for():
    """The GPU family catalog asks 1 (router) + 2 + 2 + 2 logical CPUs; a local Ray of the default 4
    left the vision engine and the router pending forever (seen on the H200)."""
    from services.core.settings import Settings
    from services.runtime import local_ray_cpus

    root = Path(__file__).resolve().parents[2]
    family = load_catalog(root / "loadtests" / "gpu" / "phi35-family-h200.yaml")
    assert family.cpus_needed == 7
    assert local_ray_cpus(Settings(ray_num_cpus=4), family) == 7
    assert local_ray_cpus(Settings(ray_num_cpus=16), family) == 16
    autoscaled = parse_catalog(
        {
            "models": [
                {
                    "name": "m",
                    "source": "/m",
                    "deployment": {
                        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
                        "placement_group_bundles": [{"CPU": 1, "GPU": 1}, {"GPU": 1}],
                    },
                }
            ]
        }
    )
    assert autoscaled.cpus_needed == 0.5 + 3 * 1  # the router's default 0.5, three replicas of one CPU bundle
    assert local_ray_cpus(Settings(ray_num_cpus=4), load_catalog(TEST_CATALOG)) == 4


def test_cluster_node_groups_must_hold_every_models_replica():
    """A replica that fits no node group would stay pending however far the cluster scales."""
    one_gpu = {"name": "gpu-1x", "gpus": 1, "cpus": 8, "memory_gib": 48, "max_nodes": 4}
    moe = parse_catalog({"models": [MINIMAL["models"][0]]}).models[0].model_dump()
    moe |= {
        "name": "moe",
        "source": "org/moe",
        "engine_args": {"tensor_parallel_size": 2, "distributed_executor_backend": "ray"},
        "deployment": {"placement_group_bundles": [{"CPU": 2, "GPU": 1}, {"GPU": 1}]},
    }
    message = _error({"cluster": {"node_groups": [one_gpu]}, "models": [moe]})
    assert "a replica of moe needs 2 GPUs and 2 CPUs on one node" in message
    two_gpus = {**one_gpu, "name": "gpu-2x", "gpus": 2}
    catalog = parse_catalog({"cluster": {"node_groups": [one_gpu, two_gpus]}, "models": [moe]})
    assert catalog.cluster is not None
    assert catalog.cluster.ray_node_types()["gpu-2x"] == {
        "resources": {"CPU": 8, "GPU": 2},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 4,
    }
    assert catalog.cluster.autoscaler.idle_timeout_s == 300


def test_cluster_block_is_validated():
    group = {"name": "gpu-1x", "gpus": 1, "cpus": 8, "memory_gib": 48, "max_nodes": 4}
    assert "min_nodes must not exceed max_nodes" in _error(
        {"cluster": {"node_groups": [{**group, "min_nodes": 5}]}, **MINIMAL}
    )
    assert "node group names must be unique" in _error({"cluster": {"node_groups": [group, group]}, **MINIMAL})
    assert "cluster.node_groups.0.name" in _error(
        {"cluster": {"node_groups": [{**group, "name": "GPU_1x"}]}, **MINIMAL}
    )
    assert "cluster.autoscaler.upscaling_mode" in _error(
        {"cluster": {"autoscaler": {"upscaling_mode": "Fast"}, "node_groups": [group]}, **MINIMAL}
    )


def test_the_edge_blocks_old_name_router_still_loads_with_a_warning():
    with pytest.warns(FutureWarning, match="`router:` block is now called `edge:`"):
        catalog = parse_catalog({**MINIMAL, "router": {"data_plane": "routed", "session_header": "X-Conv"}})
    assert catalog.edge.session_header == "X-Conv" and catalog.data_plane == "routed"
    assert catalog.edge.deployment.num_replicas == 2  # the routed default applies under the old name too
    assert "`edge:` only" in _error({**MINIMAL, "router": {}, "edge": {}})


def test_an_idle_policy_is_for_a_model_that_sleeps_or_scales_to_zero():
    entry = MINIMAL["models"][0]
    sleeps = parse_catalog({"models": [{**entry, "idle": {"sleep_after_s": 300}}]}).models[0]
    assert sleeps.idle is not None and sleeps.idle.sleep_after_s == 300
    assert sleeps.hold_timeout_s is None  # it always has a replica: nothing to hold its requests for
    assert "sleeps" in _error({"models": [{**entry, "idle": {"hold_timeout_s": 30}}]})
    assert "sleep_after_s" in _error({"models": [{**entry, "idle": {"sleep_after_s": 0}}]})
