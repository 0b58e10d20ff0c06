"""The engine deployment: one Ray Serve deployment per catalog model, hosting vLLM's AsyncLLM
and vLLM's own OpenAI serving layer (chat templates, sampling, logprobs, structured output).

Every request is answered as the stream of services/engine/protocol.py: a `Head` first (so the
HTTP status is known before a byte goes out), then vLLM's SSE frames and the `Outcome`. Two callers:
- the direct ingress (services/ingress/direct.py, a subclass that is also the HTTP server) iterates
  `stream` in-process;
- the routed ingress calls `generate` through a Serve handle; frames that queue up while the
  transport is busy are joined into one item (services/engine/streaming.py), since every item
  crosses a process boundary there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray import serve

from services.core.catalog import ModelEntry
from services.core.errors import error_json, from_vllm_error
from services.core.logs import show_platform_logs
from services.core.settings import Settings
from services.core.timing import (
    CARD_START_CLAIM_TIMEOUT_S,
    ENGINE_SERIES_PERIOD_S,
    ENGINE_SNAPSHOT_PERIOD_S,
    TTFT_WINDOW_S,
)
from services.engine import cpu_affinity, sse, vllm_compat
from services.engine.adapters import AdapterSync
from services.engine.card_memory import CardFull, CardSeat, card_seat
from services.engine.idle_sleep import IdleSleep
from services.engine.profiles import Hardware
from services.engine.profiles import choose as choose_profile
from services.engine.protocol import EngineCall, Head, Outcome, StreamItem
from services.engine.routes import engine_routes
from services.engine.streaming import coalesce
from services.metrics.engine_series import (
    KV_USAGE_NAMES,
    SNAPSHOT_SAMPLES,
    TTFT,
    WAITING,
    EngineSnapshot,
    SeriesShipper,
    gauges_of,
    vllm_families,
)
from services.metrics.recent import CumulativeHistogram, RecentQuantile, cumulative_buckets
from services.models import resolve_source
from services.routing.policies import routing_stats
from services.routing.response_ids import new_response_id

logger = logging.getLogger("slmserve.engine")


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _priority(body: dict[str, Any]) -> int:
    """vLLM's priority of a request (0 unless set; the edge checked its type)."""
    priority = body.get("priority")
    return priority if isinstance(priority, int) else 0


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


# A Responses API answer's status, as the finish reason the platform's metrics count.
_RESPONSE_FINISH = {"completed": "stop", "incomplete": "length", "failed": "error", "cancelled": "abort"}


def _outcome_of(result: Any) -> Outcome | None:
    """Usage and finish reason of a complete answer; None for answers without usage (tokenize)."""
    usage = getattr(result, "usage", None)
    if usage is None:
        return None
    if hasattr(usage, "input_tokens"):  # a Responses API answer
        return Outcome(usage.input_tokens, usage.output_tokens or 0, _RESPONSE_FINISH.get(result.status))
    choices = getattr(result, "choices", None)
    return Outcome(usage.prompt_tokens, usage.completion_tokens or 0, choices[-1].finish_reason if choices else None)


async def _response_frames(events: AsyncIterator[Any]) -> AsyncGenerator[str | Outcome, None]:
    """A streamed Responses API answer: vLLM's events as named SSE events, as `vllm serve` writes them,
    with the Outcome just before the last one (clients hang up after it). Closing it aborts the request."""
    try:
        async for event in events:
            if event.type in ("response.completed", "response.incomplete", "response.failed"):
                outcome = _outcome_of(event.response)
                if outcome is not None:
                    yield outcome
            yield sse.named_event(event.type, event.model_dump_json(indent=None, by_alias=True))
    except Exception as error:  # the stream already started: report in-band, never hang
        logger.exception("responses stream failed")
        yield Outcome(finish_reason="error")
        yield sse.error_event(500, f"generation failed: {type(error).__name__}")
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _process_age_s() -> float:
    """Seconds since this process started (Linux's /proc; 0 where there is none)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


class EngineDeployment:
    """Wrapped by `serve.deployment` in services.app with the catalog entry's options."""

    async def __init__(self, entry: dict[str, Any], cache_dir: str, metrics_hub: Any = None) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        show_platform_logs()
        self.entry = ModelEntry.model_validate(entry)
        cpu_affinity.place_engine_replica(self.entry.cpu_placement)  # before vLLM starts its processes
        self.metrics_hub = metrics_hub
        started = time.monotonic()
        process_age_s = _process_age_s()  # the worker's start and the replica's imports, before this
        model = resolve_source(self.entry.source, Path(cache_dir))
        files_s = time.monotonic() - started
        self.hardware = Hardware.detect()
        self.profile = choose_profile(self.entry.profiles, self.hardware, Settings().profile)
        if self.entry.profiles:
            logger.info(
                "%s on %s: profile %s",
                self.entry.name,
                self.hardware.describe(),
                self.profile.name if self.profile else "none fits, the entry's own engine_args",
            )
        engine_args = self.entry.vllm_engine_args(self.profile)
        sleep_after_s = self.entry.sleep_after_s
        if sleep_after_s is not None and not self.hardware.gpu_count:
            logger.info("%s: no GPU, so no sleep mode (vLLM's needs CUDA); this replica stays awake", self.entry.name)
            sleep_after_s = None
        self.card: CardSeat | None = None
        if sleep_after_s is not None:
            engine_args["enable_sleep_mode"] = True
            if self.entry.deployment.gpus_per_replica < 1:  # a share of a card: take turns with its other sleepers
                # the chosen profile's share, else the entry's
                share = float(engine_args.get("gpu_memory_utilization", self.entry.gpu_share))
                self.card = card_seat(serve.get_replica_context().replica_id.unique_id, share)
                await self.card.claim(CARD_START_CLAIM_TIMEOUT_S)  # vLLM asks for its share free; others may start
        engine_started = time.monotonic()  # vLLM's import too: the first vllm_compat lookup makes it
        namespace = vllm_compat.engine_namespace(model, self.entry.names, engine_args)
        self.stack = vllm_compat.ServingStack(namespace)
        await self.stack.start()
        cpu_affinity.settle_engine_replica(self.entry.cpu_placement)
        engine_s = time.monotonic() - engine_started
        self.idle: IdleSleep | None = None
        if sleep_after_s is not None:
            # vLLM's first sleep takes seconds, later ones a fifth of one (a wake that had to put a
            # never-slept neighbour to sleep took 5.9 s, the next twenty 0.45-0.49 s): pay it at start.
            await self.stack.sleep()
            await self.stack.wake_up()
            self.idle = IdleSleep(self.stack.sleep, self.stack.wake_up, sleep_after_s, card=self.card)
            self._idle_task = asyncio.get_running_loop().create_task(self.idle.run_forever())
            if self.card is not None:
                self._card_task = asyncio.get_running_loop().create_task(self.idle.obey_card_forever(self.card))
        self.adapters: AdapterSync | None = None
        self.held_adapters: list[str] = []  # in the engine's LoRA cache; refreshed with every metrics snapshot
        self.held_adapters_at = 0.0
        if self.entry.lora is not None:
            self.adapters = AdapterSync(self.entry.lora, self.stack, self.entry.names)
            await self.adapters.refresh()  # the adapters present at start are served from the first request
            self._adapter_task = asyncio.get_running_loop().create_task(self.adapters.run_forever())
        self.stack.keep_responses(self.entry.stored_responses)
        self.routes = engine_routes(self.stack)
        self.kv_usage = 0.0  # refreshed with every metrics snapshot, as are the next two
        self.waiting = 0.0
        self.recent_ttft = RecentQuantile(TTFT_WINDOW_S)
        # An SLO that follows one service class times this replica's streams of that class (and more
        # urgent ones) itself: vLLM's TTFT histogram holds every class.
        autoscaling = self.entry.deployment.autoscaling_config
        slo = autoscaling.slo if autoscaling is not None else None
        self.slo_class_priority = slo.class_priority if slo is not None else None
        self.class_ttft = CumulativeHistogram() if self.slo_class_priority is not None else None
        self.load_seconds = time.monotonic() - started
        # The phases of a replica's start (issue 29, loadtests/gpu/run_gpu_coldstart.py reads this line).
        logger.info(
            "engine for %s ready in %.1fs (process up %.1fs before; model files %.1fs, vLLM engine %.1fs)",
            self.entry.name,
            self.load_seconds,
            process_age_s,
            files_s,
            engine_s,
        )
        if metrics_hub is not None:
            self._snapshot_task = asyncio.get_running_loop().create_task(self._report_metrics_forever())

    async def generate(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        """`stream` for callers through a Serve handle (routed mode), with queued frames joined."""
        frames = self.stream(call)
        head = await anext(frames)
        assert isinstance(head, Head)  # every stream opens with its head
        yield head
        if head.body is None:
            async for item in coalesce(frames):
                yield item
        else:
            await frames.aclose()

    def stream(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        """Yields the head, then (for streams) SSE-framed chunks exactly as vLLM writes them, with
        the stream's Outcome just before the final [DONE]. Closing it aborts the request. An engine
        that sleeps when idle is woken first, and kept awake until the stream ends."""
        return self._stream(call) if self.idle is None else self._awake_stream(call, self.idle)

    async def _awake_stream(self, call: EngineCall, idle: IdleSleep) -> AsyncGenerator[StreamItem, None]:
        try:
            async with idle.serving():
                frames = self._stream(call)
                try:
                    async for item in frames:
                        yield item
                finally:
                    await frames.aclose()
        except CardFull as full:  # only the wake raises it, before anything was yielded
            message = f"model {self.entry.name} is waking, but its GPU has no room yet ({full})"
            yield Head(503, error_json(503, message, code="model_not_ready"), None)

    async def _stream(self, call: EngineCall) -> AsyncGenerator[StreamItem, None]:
        started = time.perf_counter()
        route, body, request_id = call.route, call.body, call.request_id
        engine_route = self.routes.get(route)
        if engine_route is None:
            yield Head(404, error_json(404, f"{route} is not supported by model {self.entry.name}"), None)
            return
        if route == "responses":  # the id names this replica, where vLLM keeps the stored response
            request_id = new_response_id(serve.get_replica_context().replica_id.unique_id)
            logger.info("request %s is response %s", call.request_id, request_id)
        client_wants_usage = _wants_usage(body)
        streams = route in ("chat", "completions") and body.get("stream") is True
        if streams and isinstance(body.get("stream_options") or {}, dict):
            # Always ask vLLM for the final usage chunk (metrics need it); drop it below unless asked.
            options = {**(body.get("stream_options") or {}), "include_usage": True}
            if not client_wants_usage:  # without include_usage vLLM puts usage on no chunk at all
                options["continuous_usage_stats"] = False
            body = {**body, "stream_options": options}
        try:
            result = await engine_route.create(body, request_id, vllm_compat.traced_request(call.trace_headers))
        except ValidationError as error:  # before CLIENT_ERRORS: pydantic's error is a ValueError too
            message, param = await vllm_compat.validation_error(error.errors()) or _validation_message(error)
            yield Head(400, error_json(400, message, param=param), None)
            return
        except vllm_compat.CLIENT_ERRORS as error:  # vLLM's validators and serving layer raise these
            yield Head(*from_vllm_error(vllm_compat.error_from_exception(engine_route.serving, error)), None)
            return
        if isinstance(result, vllm_compat.ErrorResponse):
            yield Head(*from_vllm_error(result), None)
            return
        responses_api = route in ("responses", "response", "response_cancel")
        if not hasattr(result, "__aiter__"):
            yield Head(200, result.model_dump_json(by_alias=responses_api).encode(), _outcome_of(result))
            return
        yield Head(200, None, None)
        if responses_api:
            events = _response_frames(result)
            try:
                async for item in events:
                    yield item
            finally:
                await events.aclose()
            return
        # Without the usage it asked for itself, a client gets vLLM's fingerprint on the finishing chunks.
        fingerprint = None if client_wants_usage else getattr(engine_route.serving, "system_fingerprint", None)
        frames = self._frames(result, request_id, client_wants_usage, fingerprint)
        slo_class = self.slo_class_priority
        timing = self.class_ttft if slo_class is not None and _priority(body) <= slo_class else None
        try:
            async for item in frames:
                if timing is not None and isinstance(item, str):  # the first token's frame
                    timing.observe(time.perf_counter() - started)
                    timing = None
                yield item
        finally:
            await frames.aclose()

    async def _frames(
        self,
        chunks: AsyncIterator[str],
        request_id: str,
        client_wants_usage: bool,
        fingerprint: str | None,
    ) -> AsyncGenerator[str | Outcome, None]:
        """vLLM's SSE chunks, minus the usage chunk the client did not ask for, with the Outcome
        placed just before [DONE] (clients hang up right after [DONE])."""
        outcome = Outcome()
        try:
            async for chunk in chunks:
                if sse.is_done(chunk):
                    yield outcome
                    yield chunk
                    return
                if (usage := sse.usage_of(chunk)) is not None:
                    outcome.prompt_tokens = usage["prompt_tokens"]
                    outcome.generation_tokens = usage.get("completion_tokens") or 0
                    if not client_wants_usage:
                        continue
                elif (reason := sse.finish_reason_of(chunk)) is not None:
                    outcome.finish_reason = reason
                    chunk = sse.with_fingerprint(chunk, fingerprint) if fingerprint else chunk
                yield chunk
        except Exception as error:  # the stream already started: report in-band, never hang
            logger.exception("stream %s failed", request_id)
            outcome.finish_reason = "error"
            yield outcome
            yield sse.error_event(500, f"generation failed: {type(error).__name__}")
            yield sse.DONE
        finally:  # also when the client left: closing vLLM's generator aborts the request in the engine
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _report_metrics_forever(self) -> None:
        """Ship this replica's vLLM metrics to the hub, rendered here (services/metrics/engine_series.py);
        the hub drops replicas that go quiet. Walking and rendering vLLM's registry takes milliseconds,
        so it runs on a thread, never on the loop that streams, and only every ENGINE_SERIES_PERIOD_S:
        the snapshots between read the few samples routing and autoscaling need."""
        shipper = SeriesShipper(serve.get_replica_context().replica_id.unique_id)
        max_num_seqs = self.stack.engine.vllm_config.scheduler_config.max_num_seqs
        whole_every = round(ENGINE_SERIES_PERIOD_S / ENGINE_SNAPSHOT_PERIOD_S)
        for tick in itertools.count():
            if tick % whole_every == 0 or shipper.needs_all:
                families = await asyncio.to_thread(vllm_families)
                series = await asyncio.to_thread(shipper.series, families)
            else:
                families, series = await asyncio.to_thread(vllm_families, SNAPSHOT_SAMPLES), None
            snapshot = EngineSnapshot(
                shipper.replica_id,
                self.entry.name,
                max_num_seqs,
                series,
                gauges_of(families),
                self.profile_info(),
                asleep=self.idle.asleep if self.idle is not None else None,
                wake_seconds=self.idle.drain_wakes() if self.idle is not None else [],
            )
            self.kv_usage = snapshot.gauge(*KV_USAGE_NAMES)
            self.waiting = snapshot.gauge(WAITING)
            self.recent_ttft.add(
                self.class_ttft.snapshot() if self.class_ttft is not None else cumulative_buckets(families, TTFT)
            )
            if self.adapters is not None:
                try:
                    listed_at = time.time()
                    self.held_adapters = await self.stack.loaded_adapters()
                    self.held_adapters_at = listed_at
                except Exception:  # routing works without it (it then follows its own sends)
                    logger.warning("could not list the engine's loaded adapters", exc_info=True)
            await shipper.ship(self.metrics_hub, snapshot)
            await asyncio.sleep(ENGINE_SNAPSHOT_PERIOD_S)

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON schemas of the bodies this engine accepts (vLLM's protocol models), for the
        router's OpenAPI document; `$defs` refer to `#/components/schemas/...`."""
        return {kind: route.schema() for kind, route in self.routes.items()}

    async def num_unfinished_requests(self) -> int:
        return self.stack.num_unfinished_requests()

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve asks about once a second (services/app.py); the routing policy reads it. A plain
        method on purpose: Serve answers it from a thread, while a coroutine would queue behind the
        streams on the replica's loop (as one, the load guard of tests/live/two_replicas saw no load)."""
        return routing_stats(
            self.stack.num_unfinished_requests(), self.kv_usage, self.held_adapters, self.held_adapters_at
        )

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve ships these to the autoscaler (services/engine/autoscaling.py, when the catalog sets `slo`)."""
        return {"waiting": self.waiting, "ttft_p90_s": self.recent_ttft.quantile(0.9)}

    async def adapter_names(self) -> list[str]:
        """The LoRA adapters this replica serves (the routed-mode router lists and resolves them)."""
        return self.adapters.names if self.adapters is not None else []

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.entry.name,
            "pid": os.getpid(),
            "vllm_version": vllm_compat.vllm_version(),
            "load_seconds": self.load_seconds,
            "max_model_len": self.stack.engine.model_config.max_model_len,
            "profile": self.profile_info(),
        }

    def profile_info(self) -> dict[str, Any]:
        """The engine profile this replica runs (`/v1/metadata`, the slmserve_engine_profile metric)."""
        profile = self.profile
        return {
            "name": profile.name if profile else "default",
            "precision": profile.precision if profile else str(self.entry.engine_args.get("dtype", "auto")),
            "tensor_parallel_size": profile.tensor_parallel_size if profile else self.entry.parallel_size,
            "hardware": self.hardware.describe(),
        }

    async def check_health(self) -> None:
        # Ray Serve calls this periodically; a dead engine core makes the replica restart.
        await self.stack.check_health()

    async def __del__(self) -> None:
        # Serve calls this after a failed __init__ too: shut down only what was built.
        stack, adapters = getattr(self, "stack", None), getattr(self, "adapters", None)
        if stack is not None:
            await stack.shutdown()
        card = getattr(self, "card", None)
        if card is not None:  # its share of the card is free for the others
            card.leave()
        if adapters is not None:
            adapters.close()
