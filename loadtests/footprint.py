"""Platform footprint of each data plane: processes and memory of everything slmserve runs except
vLLM's engine cores, for the same catalog served routed (router replicas -> engine replicas) and
direct (each engine replica serves HTTP). Writes a table to docs/benchmarks.md.

`.venv/bin/python -m loadtests.footprint` (the one-model cpu catalog, about 3 minutes on 2 cores)
`.venv/bin/python -m loadtests.footprint --catalog tests/catalogs/test.yaml` (three models, about 8)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import psutil

from loadtests.harness import ROOT, command_line
from loadtests.report import write_section
from testkit.serving import catalog_variant, serving

ENGINE_CORE = "VLLM::EngineCore"


def _platform_processes(root: psutil.Process) -> list[psutil.Process]:
    """The serving process tree (Ray's daemons and workers are children of the driver), less vLLM's
    engine core and its own children, which are the same in both shapes."""
    tree = [root, *root.children(recursive=True)]
    engine = {p.pid for p in tree if ENGINE_CORE in " ".join(p.cmdline() or [p.name()])}
    engine |= {child.pid for p in tree if p.pid in engine for child in p.children(recursive=True)}
    return [p for p in tree if p.pid not in engine]


def measure(catalog_name: str, data_plane: str) -> dict[str, object]:
    models: list[str] = []

    def plane(catalog: dict) -> None:
        catalog.setdefault("edge", {})["data_plane"] = data_plane
        models.extend(entry["name"] for entry in catalog["models"])

    catalog = catalog_variant(catalog_name, plane)
    with serving(catalog) as server:
        for model in models:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
            for _ in range(20 // len(models) + 1):  # warm every path once
                httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        time.sleep(3)
        processes = _platform_processes(psutil.Process(server.process.pid))
        rss = sum(p.memory_info().rss for p in processes)
        served_by = httpx.get(f"{server.base_url}/v1/models", timeout=10).headers["x-slmserve-served-by"]
        names = sorted(" ".join(p.cmdline()[:1]).split("/")[-1][:60] for p in processes)
        return {
            "data_plane": data_plane,
            "served_by": served_by,
            "processes": len(processes),
            "rss_mib": rss / 2**20,
            "names": names,
        }


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__)
    parser.add_argument("--catalog", default="cpu", help="a shipped catalog's name or a catalog file")
    catalog_name = parser.parse_args(argv).catalog
    rows = [measure(catalog_name, shape) for shape in ("routed", "direct")]
    table = (
        "| data plane | answered by | Python processes a token crosses | platform processes | "
        "platform RSS (MiB) |\n|---|---|---|---|---|\n"
    )
    hops = {"routed": "2 (a router replica, the engine replica)", "direct": "1 (the engine replica)"}
    for row in rows:
        table += (
            f"| {row['data_plane']} | {row['served_by']} | {hops[str(row['data_plane'])]} | "
            f"{row['processes']} | {row['rss_mib']:,.0f} |\n"
        )
    print(table)
    for row in rows:
        print(row["data_plane"], row["names"])
    one_model = catalog_name == "cpu"
    what = "The cpu catalog (one model)" if one_model else f"`{catalog_name}` (every model in it)"
    command = ".venv/bin/python -m loadtests.footprint" + ("" if one_model else f" --catalog {catalog_name}")
    section = f"""## Platform footprint: routed vs direct{"" if one_model else f", {Path(catalog_name).name}"}

{what} served both ways on this machine, after 20 streamed requests; every process of the serving
tree (Ray's daemons and workers, HAProxy, Serve's replicas) except vLLM's engine cores, which are the
same in both. Reproduce: `{command}`.

{table}"""
    marker = "footprint" if one_model else f"footprint-{Path(catalog_name).stem}"
    write_section(ROOT / "docs" / "benchmarks.md", marker, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
