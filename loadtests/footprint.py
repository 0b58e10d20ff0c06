"""Platform footprint of each data plane: processes and memory of everything slmserve runs except
vLLM's engine core, for the same one-model catalog served routed (router replica -> engine replica)
and direct (the engine replica serves HTTP). Writes a table to docs/benchmarks.md.

`.venv/bin/python -m loadtests.footprint` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import psutil

from loadtests.report import write_section
from loadtests.serving import catalog_variant, serving

ROOT = Path(__file__).resolve().parents[1]
ENGINE_CORE = "VLLM::EngineCore"


def _platform_processes(root: psutil.Process) -> list[psutil.Process]:
    """The serving process tree (Ray's daemons and workers are children of the driver), less vLLM's
    engine core and its own children, which are the same in both shapes."""
    tree = [root, *root.children(recursive=True)]
    engine = {p.pid for p in tree if ENGINE_CORE in " ".join(p.cmdline() or [p.name()])}
    engine |= {child.pid for p in tree if p.pid in engine for child in p.children(recursive=True)}
    return [p for p in tree if p.pid not in engine]


def measure(data_plane: str) -> dict[str, object]:
    catalog = catalog_variant("cpu", lambda c: c.setdefault("router", {}).update(data_plane=data_plane))
    with serving(catalog) as server:
        body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
        for _ in range(20):  # warm every path once
            httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60).raise_for_status()
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


def main() -> int:
    rows = [measure(shape) for shape in ("routed", "direct")]
    table = (
        "| data plane | answered by | Python processes on the token path | platform processes | "
        "platform RSS (MiB) |\n|---|---|---|---|---|\n"
    )
    hops = {"routed": "2 (router replica, engine replica)", "direct": "1 (engine replica)"}
    for row in rows:
        table += (
            f"| {row['data_plane']} | {row['served_by']} | {hops[str(row['data_plane'])]} | "
            f"{row['processes']} | {row['rss_mib']:,.0f} |\n"
        )
    print(table)
    for row in rows:
        print(row["data_plane"], row["names"])
    section = f"""## Platform footprint: routed vs direct

The cpu catalog (one model) served both ways on this machine, after 20 streamed requests; every
process of the serving tree (Ray's daemons and workers, HAProxy, Serve's replicas) except vLLM's
engine core, which is the same in both. Reproduce: `.venv/bin/python -m loadtests.footprint`.

{table}"""
    write_section(ROOT / "docs" / "benchmarks.md", "footprint", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
