"""build_once: on a cold cache several replica processes ask for the same self-made model at once;
exactly one builds it and every caller gets the complete directory."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from services.models.cache import build_once


def _slow_build(out: Path) -> None:
    (out / "part-1").write_text("a")
    time.sleep(0.5)  # long enough for the other processes to arrive mid-build
    (out / "part-2").write_text("b")
    with (out.parent / "builds.log").open("a") as log:
        log.write("built\n")


def _ask(out_dir: str, results: multiprocessing.Queue) -> None:
    out = build_once(Path(out_dir), "1", _slow_build)
    results.put(sorted(path.name for path in out.iterdir()))


def test_concurrent_callers_build_once_and_all_see_a_complete_directory(tmp_path):
    out_dir = tmp_path / "models" / "m"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_ask, args=(str(out_dir), results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    listings = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert listings == [["SLMSERVE_RECIPE", "part-1", "part-2"]] * 3
    assert (tmp_path / "models" / "builds.log").read_text() == "built\n"
    assert not list((tmp_path / "models").glob("*.partial"))


def test_a_new_recipe_rebuilds_and_a_failed_build_leaves_nothing(tmp_path):
    out_dir = tmp_path / "m"
    build_once(out_dir, "1", lambda out: (out / "old").write_text("x"))
    build_once(out_dir, "2", lambda out: (out / "new").write_text("y"))
    assert sorted(path.name for path in out_dir.iterdir()) == ["SLMSERVE_RECIPE", "new"]

    def broken(out: Path) -> None:
        (out / "half").write_text("z")
        raise RuntimeError("conversion failed")

    try:
        build_once(tmp_path / "other", "1", broken)
    except RuntimeError:
        pass
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob("*.partial"))
