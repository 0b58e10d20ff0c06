"""Engine profile choice (services/engine/profiles.py): a table of machines to the profile each model of the
production catalog runs, pins, and the CLI that shows it."""

from __future__ import annotations

import pytest

from services.cli import main as cli_main
from services.core.catalog import CatalogError, load_catalog, parse_catalog
from services.core.settings import resolve_catalog_path
from services.engine.profiles import Hardware, ProfileError, choose

PHI35 = load_catalog(resolve_catalog_path("phi35"))
MINI, MOE, VISION = PHI35.models


@pytest.mark.parametrize(
    ("gpu", "mini", "moe"),
    [
        ("H200", "fp8-throughput", None),  # one GPU: the MoE's profiles all need two
        ("H100x2", "fp8-throughput", "fp8-tp2"),
        ("L40S", "fp8-throughput", None),  # Ada has fp8
        ("L4x2", "fp8-throughput", "fp8-tp2"),
        ("A100x2", "bf16-throughput", "bf16-tp2"),  # Ampere: no fp8 tensor cores
        ("A10G", "bf16-throughput", None),
        ("T4", None, None),  # no bf16 before Ampere: nothing fits
        ("cpu", None, None),
    ],
)
def test_each_machine_runs_the_best_profile_it_can(gpu, mini, moe):
    hardware = Hardware.parse(gpu)
    assert getattr(choose(MINI.profiles, hardware), "name", None) == mini
    assert getattr(choose(MOE.profiles, hardware), "name", None) == moe
    assert choose(VISION.profiles, hardware) is None  # lists none: its own engine_args


def test_fp8_comes_first_then_throughput_on_the_fewest_gpus_then_catalog_order():
    entry = parse_catalog(
        {
            "models": [
                {
                    "name": "m",
                    "source": "org/m",
                    "deployment": {"ray_actor_options": {"num_gpus": 4}},
                    "profiles": [
                        {"name": "bf16", "precision": "bf16"},
                        {
                            "name": "fp8-latency-tp4",
                            "precision": "fp8",
                            "optimize": "latency",
                            "tensor_parallel_size": 4,
                        },
                        {"name": "fp8-tp2", "precision": "fp8", "tensor_parallel_size": 2},
                        {"name": "fp8-tp1-hopper", "precision": "fp8", "gpus": ["H100", "H200"]},
                        {"name": "fp8-big", "precision": "fp8", "min_gpu_memory_gib": 100},
                    ],
                }
            ]
        }
    ).models[0]
    assert choose(entry.profiles, Hardware.parse("H100x4")).name == "fp8-tp1-hopper"
    assert choose(entry.profiles, Hardware.parse("L40Sx4")).name == "fp8-tp2"  # not Hopper
    assert choose(entry.profiles, Hardware.parse("L40S")).name == "bf16"  # fp8 profiles need 2+ GPUs or Hopper
    assert choose(entry.profiles, Hardware.parse("A100x4")).name == "bf16"
    assert choose(entry.profiles, Hardware.parse("B200")).name == "fp8-big"  # the only fp8 one a B200 may run
    assert choose(entry.profiles, Hardware.parse("H100x4"), pinned="fp8-latency-tp4").name == "fp8-latency-tp4"


def test_a_pin_runs_or_fails_with_what_is_missing():
    assert choose(MINI.profiles, Hardware.parse("H200"), pinned="bf16-throughput").name == "bf16-throughput"
    with pytest.raises(ProfileError, match=r"needs fp8 tensor cores \(compute capability >= 8.9, has 8\)"):
        choose(MINI.profiles, Hardware.parse("A100"), pinned="fp8-throughput")
    with pytest.raises(ProfileError, match="needs 2 GPUs"):
        choose(MOE.profiles, Hardware.parse("H100"), pinned="fp8-tp2")
    with pytest.raises(ProfileError, match="it has: fp8-throughput, bf16-throughput"):
        choose(MINI.profiles, Hardware.parse("H100"), pinned="int4")
    with pytest.raises(ProfileError, match="a GPU"):
        choose(MINI.profiles, Hardware(), pinned="fp8-throughput")


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA L4", "L4"),
    ],
)
def test_gpu_names_map_to_their_family(name, family):
    assert Hardware(name, 1, 80, 9.0).family == family


def test_a_profile_sets_precision_and_parallelism_over_the_entry_s_engine_args():
    fp8 = next(profile for profile in MINI.profiles if profile.name == "fp8-throughput")
    args = MINI.vllm_engine_args(fp8)
    assert args["quantization"] == "fp8" and args["dtype"] == "bfloat16"
    assert args["max_model_len"] == MINI.engine_args["max_model_len"]
    assert "quantization" not in MINI.vllm_engine_args()


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        ([{"name": "a"}, {"name": "a"}], "profile names must be unique"),
        ([{"name": "tp2", "tensor_parallel_size": 2}], "needs 2 GPUs per replica; the deployment gives a replica 1"),
        ([{"name": "x", "engine_args": {"quantization": "awq"}}], "comes from the profile's own fields"),
        ([{"name": "x", "precision": "int4"}], "precision"),
    ],
)
def test_bad_profiles_are_refused_by_the_catalog(profiles, message):
    data = {
        "models": [
            {"name": "m", "source": "org/m", "deployment": {"ray_actor_options": {"num_gpus": 1}}, "profiles": profiles}
        ]
    }
    with pytest.raises(CatalogError, match=message):
        parse_catalog(data)


def test_the_cli_shows_the_choice_for_a_machine(capsys):
    assert cli_main(["profiles", "list", "--catalog", "phi35", "--gpu", "H100x2"]) == 0
    out = capsys.readouterr().out
    assert "hardware: 2x H100" in out and "runs profile fp8-throughput" in out
    assert "* fp8-tp2" in out and "lists no profiles" in out
    assert cli_main(["profiles", "list", "--catalog", "phi35", "--gpu", "A100", "--pin", "fp8-throughput"]) == 2
    assert "fp8 tensor cores" in capsys.readouterr().err
    assert cli_main(["profiles", "list", "--gpu", "Z80"]) == 2
