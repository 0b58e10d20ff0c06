"""An engine replica's LoRA adapters, kept in step with the catalog's `lora.adapters_dir`.

Every `refresh_s` the directory is listed: a new or changed adapter is snapshotted, checked
(services/engine/adapter_files.py) and registered through vLLM's runtime-loading path; a removed one is
unregistered (requests already running with it finish; new ones get 404). A broken adapter is
logged once per version of its files and left out; nothing about it reaches the engine, so it
cannot take the replica down. Each replica does this itself: the directory is shared (a PVC),
the registration is per engine.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.core.catalog import LoraOptions
from services.core.timing import ADAPTER_SNAPSHOT_GRACE_S
from services.engine.adapter_files import (
    Adapter,
    AdapterError,
    BaseShape,
    CheckedAdapter,
    list_adapters,
    snapshot_and_check,
)

logger = logging.getLogger("slmserve.adapters")


class AdapterSync:
    def __init__(self, options: LoraOptions, stack: Any, reserved_names: list[str]) -> None:
        self.options = options
        self.stack = stack  # services.engine.vllm_compat.ServingStack
        self.reserved = reserved_names
        self.base = BaseShape.from_config(stack.base_model_config())
        self.snapshots = Path(tempfile.mkdtemp(prefix="slmserve-adapters-"))
        self.served: dict[str, CheckedAdapter] = {}
        self.refused: dict[str, tuple[str, str]] = {}  # name -> (fingerprint, reason), logged once each

    @property
    def names(self) -> list[str]:
        return sorted(self.served)

    async def refresh(self) -> None:
        """One pass over the directory (the engine's start runs the first, `run_forever` the rest, so
        two never overlap)."""
        found, refused_names = await asyncio.to_thread(list_adapters, Path(self.options.adapters_dir), self.reserved)
        for name, reason in refused_names.items():
            self._refuse(name, "-", reason)
        for name in [
            name
            for name, served in self.served.items()
            if name not in found or found[name].fingerprint != served.fingerprint
        ]:
            await self._withdraw(name)
        for name, adapter in found.items():
            if name not in self.served and self.refused.get(name, ("",))[0] != adapter.fingerprint:
                await self._serve(adapter)
        for name in set(self.refused) - set(found) - set(refused_names):
            del self.refused[name]  # gone from the directory: a later copy is logged again

    async def _serve(self, adapter: Adapter) -> None:
        try:
            checked = await asyncio.to_thread(
                snapshot_and_check, adapter, self.snapshots, self.base, self.options.max_lora_rank
            )
        except (AdapterError, OSError) as error:
            self._refuse(adapter.name, adapter.fingerprint, str(error))
            return
        problem = await self.stack.load_adapter(checked.name, str(checked.path))
        if problem is not None:
            shutil.rmtree(checked.path, ignore_errors=True)  # never registered: nothing reads it
            self._refuse(adapter.name, adapter.fingerprint, f"the engine refused it: {problem}")
            return
        self.served[checked.name] = checked
        self.refused.pop(checked.name, None)
        logger.info("serving LoRA adapter %s (rank %d) from %s", checked.name, checked.rank, adapter.source)

    async def _withdraw(self, name: str) -> None:
        checked = self.served.pop(name)
        await self.stack.unload_adapter(name)
        logger.info("LoRA adapter %s withdrawn (removed or changed in %s)", name, self.options.adapters_dir)
        # Requests already running with it may still reload it from its snapshot (vLLM's cache can
        # evict it mid-stream): the snapshot goes once they are past any deadline.
        asyncio.get_running_loop().call_later(ADAPTER_SNAPSHOT_GRACE_S, shutil.rmtree, checked.path, True)

    def _refuse(self, name: str, version: str, reason: str) -> None:
        if self.refused.get(name) != (version, reason):
            logger.warning("LoRA adapter %s left out: %s", name, reason)
        self.refused[name] = (version, reason)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_s)
            try:
                await self.refresh()
            except Exception:  # a flaky volume must not end the refreshing
                logger.exception("rescanning %s failed", self.options.adapters_dir)

    def close(self) -> None:
        shutil.rmtree(self.snapshots, ignore_errors=True)
