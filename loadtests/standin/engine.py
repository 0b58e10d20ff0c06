"""A stand-in engine for scale runs only (issue 32). It speaks the engine protocol of
services/engine/protocol.py (a `Head`, SSE frames shaped like vLLM's, the `Outcome`, `[DONE]`) and
paces its tokens like vLLM serving Phi-3.5-mini on one H200, computing nothing, so that 64 replicas
fit on a 2-core machine. Everything around it is the platform's own: HAProxy, the ReplicaPicker, the
edge in the replica's process, the metrics hub (to which it ships a real engine's series each
second), the limit broker.

No catalog can name it: loadtests/scale.py passes it to services.runtime.start_local as the class
that hosts each model in direct mode. It imports no vLLM (a replica starts in about 2 s and takes about 150 MB).

The pace is a straight-line fit to docs/benchmarks.md run 8 (bare vLLM 0.24, Phi-3.5-mini, H200): TTFT
p50 18.0 / 38.9 / 99.6 / 171.3 ms and ITL p50 3.18 / 3.58 / 5.20 / 7.59 ms at 1 / 8 / 32 / 64 streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from services.core.catalog import ModelEntry
from services.core.errors import error_json
from services.core.timing import ENGINE_SNAPSHOT_PERIOD_S
from services.engine import sse
from services.engine.protocol import EngineCall, Head, Outcome, StreamItem
from services.ingress.direct import DirectIngress
from services.metrics.engine_series import RUNNING, EngineSnapshot, SeriesShipper
from services.routing.policies import routing_stats

logger = logging.getLogger("slmserve.standin")

SERIES_FILE = Path(__file__).with_name("vllm_series.prom")  # loadtests/standin/record.py writes it
MAX_NUM_SEQS = 256
MAX_TOKENS = 4096


@dataclass(frozen=True)
class Pace:
    """Seconds to the first token and between tokens, given the streams the replica holds."""

    ttft_s: float = 0.0180
    ttft_per_stream_s: float = 0.0024
    itl_s: float = 0.00310
    itl_per_stream_s: float = 0.00007

    def first_token(self, streams: int) -> float:
        return self.ttft_s + self.ttft_per_stream_s * max(0, streams - 1)

    def next_token(self, streams: int) -> float:
        return self.itl_s + self.itl_per_stream_s * max(0, streams - 1)


def _tokens_asked(body: dict[str, Any]) -> int:
    asked = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    return min(asked, MAX_TOKENS) if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else 16


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(json.dumps(body.get("messages", body.get("prompt", "")))) // 4)


class StandInEngine:
    """What services/ingress/direct.py's DirectIngress needs of an engine, and what Serve asks of an
    engine replica (routing and autoscaling stats, health)."""

    async def __init__(self, entry: dict[str, Any], cache_dir: str, metrics_hub: Any = None) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        self.entry = ModelEntry.model_validate(entry)
        self.metrics_hub = metrics_hub
        self.pace = Pace()
        self.streams = 0
        self.families = list(text_string_to_metric_families(SERIES_FILE.read_text()))
        if metrics_hub is not None:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._report_metrics_forever())

    def stream(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        return self._stream(call)

    async def _stream(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        if call.route not in ("chat", "completions"):
            yield Head(404, error_json(404, f"{call.route} is not served by the stand-in engine"), None)
            return
        body, chat = call.body, call.route == "chat"
        outcome = Outcome(_prompt_tokens(body), _tokens_asked(body), "length")
        self.streams += 1
        try:
            await asyncio.sleep(self.pace.first_token(self.streams))
            if body.get("stream") is not True:
                await asyncio.sleep(self.pace.next_token(self.streams) * (outcome.generation_tokens - 1))
                yield Head(200, json.dumps(self._answer(call, chat, outcome)).encode(), outcome)
                return
            yield Head(200, None, None)
            frame = _Frames(call, chat)
            for index in range(outcome.generation_tokens):
                if index:
                    await asyncio.sleep(self.pace.next_token(self.streams))
                last = index == outcome.generation_tokens - 1
                yield frame.token(" tok", outcome.finish_reason if last else None)
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                yield frame.usage(outcome)
            yield outcome
            yield sse.DONE
        finally:
            self.streams -= 1

    def _answer(self, call: EngineCall, chat: bool, outcome: Outcome) -> dict[str, Any]:
        text = " tok" * outcome.generation_tokens
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": outcome.finish_reason}
            if chat
            else {"index": 0, "text": text, "finish_reason": outcome.finish_reason}
        )
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{call.request_id}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.body.get("model", self.entry.name),
            "choices": [choice],
            "usage": _usage(outcome),
        }

    async def _report_metrics_forever(self) -> None:
        """A real engine's series, with this replica's streams in vLLM's running gauge, each second:
        EngineDeployment ships the whole series only every ENGINE_SERIES_PERIOD_S, so this stands in
        for the hub's heavier case (the scale measurements in docs/scale.md were made this way)."""
        shipper = SeriesShipper(serve.get_replica_context().replica_id.unique_id)
        while True:
            series = await asyncio.to_thread(shipper.series, self._families_now())
            snapshot = EngineSnapshot(
                shipper.replica_id, self.entry.name, MAX_NUM_SEQS, series, {RUNNING: self.streams}
            )
            snapshot.profile = self.profile_info()
            await shipper.ship(self.metrics_hub, snapshot)
            await asyncio.sleep(ENGINE_SNAPSHOT_PERIOD_S)

    def _families_now(self) -> list[Metric]:
        families = []
        for family in self.families:
            if family.name != RUNNING:
                families.append(family)
                continue
            running = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                running.add_sample(sample.name, sample.labels, float(self.streams))
            families.append(running)
        return families

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        return {}

    async def adapter_names(self) -> list[str]:
        return []

    def profile_info(self) -> dict[str, Any]:
        return {"name": "standin-h200", "precision": "none", "tensor_parallel_size": 1, "hardware": "none"}

    async def num_unfinished_requests(self) -> int:
        return self.streams

    def record_routing_stats(self) -> dict[str, Any]:
        return routing_stats(self.streams, self.streams / MAX_NUM_SEQS)

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"waiting": 0.0, "ttft_p90_s": self.pace.first_token(self.streams)}

    async def check_health(self) -> None:
        return None


class _Frames:
    """Chunks shaped like vLLM's OpenAI stream."""

    def __init__(self, call: EngineCall, chat: bool) -> None:
        self.chat = chat
        self.head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{call.request_id or uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": call.body.get("model", ""),
        }

    def token(self, text: str, finish_reason: str | None) -> str:
        choice: dict[str, Any] = (
            {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}
            if self.chat
            else {"index": 0, "text": text, "finish_reason": finish_reason}
        )
        return sse.event({**self.head, "choices": [choice]})

    def usage(self, outcome: Outcome) -> str:
        return sse.event({**self.head, "choices": [], "usage": _usage(outcome)})


def _usage(outcome: Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.generation_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.generation_tokens,
    }


class StandInDirectEngine(DirectIngress, StandInEngine):
    """The stand-in as the direct ingress of its model's application (what DirectEngine is for vLLM)."""
