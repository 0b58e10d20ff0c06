"""The package layers of services/ run one way (README's module map), read from the imports (ast):

    models < core < metrics, haproxy < routing < engine < edge < ingress < app, runtime, cli, drain, deploy, usage

A module imports its own package or a lower layer, never a higher one or a neighbour of its own layer.
vLLM is imported only by services/engine/vllm_compat.py, and Ray's private API (modules or names
starting with `_`, `ray.core.generated`, `_` keyword arguments) is used only by
services/core/ray_compat.py."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS: tuple[tuple[str, ...], ...] = (
    ("services.models",),
    ("services.core",),
    ("services.metrics", "services.haproxy"),
    ("services.routing",),
    ("services.engine",),
    ("services.edge",),
    ("services.ingress",),
    ("services.app", "services.runtime", "services.cli", "services.drain", "services.deploy", "services.usage"),
)
TOP = len(LAYERS) - 1
VLLM_COMPAT = "services.engine.vllm_compat"
RAY_COMPAT = "services.core.ray_compat"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (for `from x import y`: x.y when that is a module, else x)
    names: tuple[str, ...]
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> Iterator[Import]:
    module = module_name(path, root)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = tuple(alias.name for alias in node.names)
            for name in names:  # `from services.core import catalog` imports services.core.catalog
                candidate = f"{node.module}.{name}"
                is_module = (root / Path(*candidate.split("."))).with_suffix(".py").is_file()
                yield Import(module, candidate if is_module else node.module, names, node.lineno)


def unit_of(module: str) -> tuple[int, str] | None:
    """(layer, unit) of a services module; the package's own `__init__` (the version) is below all."""
    if module == "services":
        return (-1, "services")
    for layer, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return (layer, "services.<top>" if layer == TOP else unit)
    return None


def _root_name(node: ast.expr) -> str | None:
    """`serve` for `serve.x.y(...)`; None for anything not rooted in a plain name."""
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else None


def _private_ray_uses(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    ray_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ray_names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "ray"}
            for alias in node.names:
                if alias.name.startswith("ray.") and (
                    any(p.startswith("_") for p in alias.name.split(".")) or alias.name.startswith("ray.core.generated")
                ):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            ray_names |= {a.asname or a.name for a in node.names}
            parts = node.module.split(".")
            if any(p.startswith("_") for p in parts) or node.module.startswith("ray.core.generated"):
                yield node.lineno, node.module
            for alias in node.names:
                if alias.name.startswith("_"):
                    yield node.lineno, f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if (root := _root_name(node.value)) in ray_names:
                yield node.lineno, f"{root}...{node.attr}"
        elif isinstance(node, ast.Call) and _root_name(node.func) in ray_names:
            for keyword in node.keywords:
                if keyword.arg and keyword.arg.startswith("_"):
                    yield node.lineno, f"keyword {keyword.arg}="


def violations(root: Path) -> list[str]:
    found: list[str] = []
    for path in sorted((root / "services").rglob("*.py")):
        module = module_name(path, root)
        place = unit_of(module)
        assert place is not None, f"{module} belongs to no layer: add its package to LAYERS"
        for imported in _imports(path, root):
            where = f"{path.relative_to(root)}:{imported.line}"
            head = imported.target.split(".")[0]
            if head == "vllm" and module != VLLM_COMPAT:
                found.append(f"{where}: imports {imported.target} (vLLM only through {VLLM_COMPAT})")
            target = unit_of(imported.target) if head == "services" else None
            if target is not None and target[1] != place[1] and target[0] >= place[0]:
                found.append(f"{where}: {module} (layer {place[0]}) imports {imported.target} (layer {target[0]})")
        if module != RAY_COMPAT:
            found += [f"{path.relative_to(root)}:{line}: Ray private {what}" for line, what in _private_ray_uses(path)]
    return found


def test_the_layers_run_one_way_and_vllm_and_ray_internals_have_one_home_each():
    assert violations(ROOT) == []


def test_a_planted_back_edge_a_vllm_import_and_a_ray_private_call_are_each_found(tmp_path: Path):
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__", "catalogs"))
    timing = tmp_path / "services" / "core" / "timing.py"
    timing.write_text(timing.read_text() + "\nfrom services.ingress import direct  # planted\n")
    records = tmp_path / "services" / "metrics" / "records.py"
    records.write_text(records.read_text() + "\nimport vllm  # planted\nfrom ray import serve\nserve._run  # planted\n")
    found = violations(tmp_path)
    assert any("services/core/timing.py" in v and "imports services.ingress.direct" in v for v in found), found
    assert any("services/metrics/records.py" in v and "imports vllm" in v for v in found), found
    assert any("services/metrics/records.py" in v and "Ray private serve..._run" in v for v in found), found
    assert len(found) == 3, found


def test_neighbours_in_one_layer_do_not_import_each_other(tmp_path: Path):
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__", "catalogs"))
    rules = tmp_path / "services" / "haproxy" / "rules.py"
    rules.write_text(rules.read_text() + "\nfrom services.metrics import records  # planted\n")
    assert [v for v in violations(tmp_path) if "haproxy/rules.py" in v] != []


BUILD_BOTH_PLANES = """
import sys
from pathlib import Path
from services.app import build_applications
from services.core.catalog import load_catalog
for plane in ("direct", "routed"):
    catalog = load_catalog(Path("tests/catalogs/test.yaml"))
    catalog = catalog.model_copy(update={"edge": catalog.edge.model_copy(update={"data_plane": plane})})
    assert build_applications(catalog, app_name="slmserve", cache_dir=Path("unused"))
print(sorted(name for name in ("vllm", "torch") if name in sys.modules))
"""


def test_building_the_applications_imports_neither_vllm_nor_torch():
    """The driver (`slmserve serve`, the chart's build step) builds every application of both planes
    without vLLM: its import cost the driver about 5 s of CPU before the first replica could start.
    Only the engine processes import it (vllm_compat looks names up on first use)."""
    result = subprocess.run([sys.executable, "-c", BUILD_BOTH_PLANES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
