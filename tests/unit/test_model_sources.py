"""The one registry of model source schemes (services/models): the catalog, the local runtime and the
engine classify a source the same way (a `~/dir` once was a local path to the engine and a hub id to
the runtime, which then let the engines go online)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.catalog import Catalog, parse_catalog
from services.core.settings import Settings
from services.models import check_source, is_local, needs_hub, resolve_source
from services.runtime import local_environment


@pytest.mark.parametrize(
    ("source", "local", "hub"),
    [
        ("embedded://smollm2-135m-instruct", False, False),
        ("generated://tiny-phimoe", False, False),
        ("/models/phi", True, False),
        ("./models/phi", True, False),
        ("../models/phi", True, False),
        ("~/models/phi", True, False),
        ("microsoft/Phi-3.5-mini-instruct", False, True),
    ],
)
def test_every_caller_classifies_a_source_alike(source: str, local: bool, hub: bool, tmp_path: Path):
    assert (is_local(source), needs_hub(source)) == (local, hub)
    catalog: Catalog = parse_catalog({"models": [{"name": "m", "source": source}]})
    offline = local_environment(Settings(cache_dir=tmp_path), catalog).get("HF_HUB_OFFLINE") == "1"
    assert offline is not hub


def test_unknown_built_in_models_and_missing_directories_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown generated model 'generated://nope'; known: tiny-phi3v, tiny-phimoe"):
        check_source("generated://nope")
    with pytest.raises(ValueError, match="unknown embedded model"):
        check_source("embedded://nope")
    with pytest.raises(ValueError, match="must not be empty"):
        check_source("")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "absent"), tmp_path)
    assert resolve_source(str(tmp_path), tmp_path) == str(tmp_path)
    assert resolve_source("org/model", tmp_path) == "org/model"
