"""What an edge replica (an engine replica, or a PlatformIngress replica) records per request,
buffered and shipped to the hub in batches so the request path never waits on a metrics call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.core.serve_context import background_task
from services.core.timing import RECORDS_FLUSH_PERIOD_S

logger = logging.getLogger("slmserve.metrics")


class Usage(Protocol):
    """What a finished request reports (services/engine/protocol.py's `Outcome` has these)."""

    prompt_tokens: int
    generation_tokens: int
    finish_reason: str | None


@dataclass(slots=True)
class HTTPRecord:
    route: str
    status_code: int


@dataclass(slots=True)
class CompletionRecord:
    """One chat/completions request that reached a model (successful or not). `model_name` is what
    the client asked for (an adapter's name for adapter requests), `base_model` the catalog model."""

    model_name: str
    success: bool
    base_model: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    vision_s: float | None = None
    # The platform's own time (slmserve_platform_overhead_seconds): HAProxy's receipt to the edge's
    # handler, the handler to the engine call, and handing a stream's chunks on to the client.
    ingress_s: float | None = None
    edge_s: float | None = None
    relay_s: float | None = None
    # Metering: who asked (an API key's tenant, or anonymous), under which service class, and how long
    # the request waited for an in-flight slot (None: no bound applied).
    tenant: str = ""
    service_class: str = ""
    queued_s: float | None = None
    # How long the request was held for its model's replica to start and answer (None: one was running).
    held_s: float | None = None

    def apply(self, outcome: Usage) -> None:
        """Take usage and finish reason from the engine's outcome of the request."""
        self.prompt_tokens = outcome.prompt_tokens
        self.generation_tokens = outcome.generation_tokens
        self.finish_reason = outcome.finish_reason


@dataclass(slots=True)
class RejectionRecord:
    model_name: str
    reason: str
    base_model: str = ""
    tenant: str = ""


@dataclass(slots=True)
class RoutingRecord:
    """Replica choices of one kind since the last flush (services/routing/policies.py)."""

    deployment: str
    policy: str
    reason: str
    count: int


@dataclass(slots=True)
class DecisionTimeRecord:
    """How long each replica choice since the last flush took (the ReplicaPicker's), in seconds."""

    deployment: str
    seconds: list[float]


@dataclass(slots=True)
class PlacedRecord:
    """A model request the platform application placed because HAProxy could not (direct mode):
    `model_name` as resolved, or "none" when the body named no served model."""

    model_name: str


Record = HTTPRecord | CompletionRecord | RejectionRecord | RoutingRecord | DecisionTimeRecord | PlacedRecord


def request_labels(record: CompletionRecord | RejectionRecord) -> tuple[str, str]:
    """(model_name, base_model) of a request's series; a base-model request is its own base."""
    return record.model_name, record.base_model or record.model_name


class RecordBuffer:
    """Per-replica buffer; a background task flushes it to the hub every `period_s`. `collectors`
    are called at each flush for records kept elsewhere in the process (routing decisions)."""

    def __init__(
        self,
        hub: Any,
        period_s: float = RECORDS_FLUSH_PERIOD_S,
        collectors: tuple[Callable[[], Sequence[Record]], ...] = (),
    ) -> None:
        self.hub = hub
        self.period_s = period_s
        self.collectors = collectors
        self._records: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start flushing (lazily: the replica's event loop only exists once requests arrive)."""
        if self._task is None:
            self._task = background_task(self._flush_forever())

    def add(self, record: Record) -> None:
        self._records.append(record)
        self.start()

    def take(self) -> list[Record]:
        """Everything not yet shipped, for a caller that ships it itself (a scrape hands it to the hub
        with its render call: one round trip instead of two)."""
        for collect in self.collectors:
            self._records.extend(collect())
        batch, self._records = self._records, []
        return batch

    async def flush(self) -> None:
        async with self._lock:
            batch = self.take()
            if not batch:
                return
            try:
                await self.hub.record.remote(batch)
            except Exception:  # metrics must never break serving
                logger.warning("dropped %d metric records: hub unreachable", len(batch), exc_info=True)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.flush()
