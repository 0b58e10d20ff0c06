"""Models slmserve builds itself (the embedded GGUF conversion, the generated test models) are
built once per cache directory. On a cold cache several engine replicas start at the same moment
and all want the same directory: the first takes a file lock and builds into a private temporary
directory, renamed into place when complete; the others wait on the lock and reuse the result."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

MARKER = "SLMSERVE_RECIPE"


def _is_built(out_dir: Path, recipe: str) -> bool:
    marker = out_dir / MARKER
    return marker.is_file() and marker.read_text() == recipe


def build_once(out_dir: Path, recipe: str, build: Callable[[Path], None]) -> Path:
    """Return `out_dir`, first calling `build(tmp_dir)` unless a build of this `recipe` exists.
    Bumping `recipe` rebuilds stale caches."""
    if _is_built(out_dir, recipe):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir.with_name(out_dir.name + ".lock")):
        if _is_built(out_dir, recipe):  # another process built it while this one waited
            return out_dir
        tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
        try:
            build(tmp)
            (tmp / MARKER).write_text(recipe)
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
