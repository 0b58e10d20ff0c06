"""The platform's edge: everything slmserve does to a request besides generating it.

One `Edge` per HTTP-serving replica. In direct mode that replica is the engine replica itself, and
the edge calls its engine in-process, so a streamed token crosses one Python process as with bare
`vllm serve`. In the platform application (what HAProxy cannot place, and every request in routed
mode) it is a PlatformIngress replica, which calls each model's engine through one reused Serve handle.

Per request, before any engine work: the JSON body is parsed once (size-limited), the model or
alias is resolved (404 `model_not_found`), readiness checked (503 + Retry-After), images verified
through the SSRF guard, admission granted (429 + Retry-After). Then one engine call, whose head
sets the HTTP status before a byte is sent, and vLLM's SSE frames pass through unchanged; a
replica lost before its head is tried once more on another (routed mode).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from services.core import ray_compat
from services.core.catalog import Catalog, ModelEntry
from services.core.errors import APIError, Code
from services.core.layout import RECEIVED_HEADER
from services.core.settings import Settings
from services.core.timing import ADAPTER_LIST_MAX_AGE_S, RETRY_AFTER_S
from services.edge.admission import Rejected, estimate_tokens
from services.edge.auth import KeyRing
from services.edge.limits import LimiterUnavailable, SharedLimits
from services.edge.media import MediaError, MediaFetcher, prepare_images
from services.edge.readiness import ControllerReadiness, ModelState, SelfReadiness
from services.edge.relay import RelayResponse, StreamRelay
from services.edge.request import envelope_of
from services.edge.tracing import Span, Tracing
from services.engine.interface import REPLICA_GONE, Engine, EngineStream
from services.engine.protocol import GENERATIVE, EngineCall, Head, RouteKind
from services.metrics.hub import HubScraper
from services.metrics.records import CompletionRecord, PlacedRecord, RecordBuffer

logger = logging.getLogger("slmserve.edge")
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class Target:
    """What a request's `model` names: a catalog model, or one of its LoRA adapters."""

    entry: ModelEntry
    adapter: str | None = None

    @property
    def model_name(self) -> str:
        """The metrics' model_name: the adapter's name for adapter requests (as NIM labels them)."""
        return self.adapter or self.entry.name


def _request_id(request: Request) -> str:
    """Serve's ingress takes the client's X-Request-Id (or makes one) and logs it; reuse that id so
    vLLM's ids and logs match it."""
    return ray_compat.serve_request_id() or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


INGRESS_PLAUSIBLE_S = 60.0


def _ingress_seconds(request: Request) -> float | None:
    """Seconds since HAProxy read the request (its stamp; absent without HAProxy in front). Hosts'
    clocks may differ by a little: a negative span reads 0, an implausible one is dropped."""
    try:
        seconds = time.time() - int(request.headers[RECEIVED_HEADER]) / 1e6
    except (KeyError, ValueError):
        return None
    return max(0.0, seconds) if seconds < INGRESS_PLAUSIBLE_S else None


BACKGROUND_REFUSED = "background responses are not served: stream the response instead (`stream: true`)"
STREAMED_LOOKUP_REFUSED = "stream=true replays a background response's events; background responses are not served"

WARM_POLL_S = 0.1  # how often a starting router looks whether its handles know their replicas

# vLLM's OpenAI server takes JSON bodies only, by media type (validate_json_request): a form-encoded
# or untyped body is a 400 there, so it is here.
UNSUPPORTED_MEDIA_TYPE = "Unsupported Media Type: Only 'application/json' is allowed"


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";", maxsplit=1)[0].strip().lower()
    if media_type != "application/json":
        raise APIError(400, UNSUPPORTED_MEDIA_TYPE, reason=Code.INVALID_JSON)
    too_large = APIError(
        413, f"request body is larger than {limit} bytes", code=Code.REQUEST_TOO_LARGE, reason=Code.REQUEST_TOO_LARGE
    )
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except json.JSONDecodeError as error:  # `param` as vLLM (FastAPI) names it: the offset in the body
        message = f"request body is not valid JSON: {error}"
        raise APIError(400, message, param=f"body.{error.pos}", reason=Code.INVALID_JSON) from None
    except UnicodeDecodeError as error:
        raise APIError(400, f"request body is not valid JSON: {error}", reason=Code.INVALID_JSON) from None
    except RecursionError:  # hostile nesting: a malformed body like any other, never a 500
        raise APIError(400, "request body is nested too deeply", reason=Code.INVALID_JSON) from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", reason=Code.INVALID_JSON)
    return body


RETRY_LATER = {"Retry-After": str(RETRY_AFTER_S)}  # on every 503 of a model not ready yet


def _retry_later(message: str, code: Code, model: str, base_model: str = "") -> APIError:
    """A 503 the client should retry after RETRY_AFTER_S, counted as a rejection for `code`."""
    return APIError(503, message, code=code, headers=RETRY_LATER, model=model, base_model=base_model, reason=code)


class Edge:
    def __init__(
        self,
        catalog: Catalog,
        engines: dict[str, Engine],
        records: RecordBuffer,
        readiness: SelfReadiness | ControllerReadiness,
        *,
        served_by: str,
        replica: str | None = None,
        limit_broker: Any = None,
    ) -> None:
        self.catalog = catalog
        self.engines = engines  # model name -> engine; a direct-mode edge holds its own model only
        self.records = records
        self.scraper = HubScraper(records.hub)  # /metrics
        self.readiness = readiness
        self.served_by = served_by  # "engine" or "router": the X-Slmserve-Served-By response header
        self.replica = replica  # the engine replica's id in direct mode: X-Slmserve-Replica
        self.created = int(time.time())
        settings = Settings()
        policy = catalog.media.model_copy(
            update={
                "allow_hosts": catalog.media.allow_hosts + settings.media_allow_hosts,
                "allow_networks": catalog.media.allow_networks + settings.media_allow_networks,
            }
        )
        self.media = MediaFetcher(policy)
        self.keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
        self.limits = SharedLimits(catalog, limit_broker)  # cluster-wide (services/edge/limits.py)
        self.tracing = Tracing(catalog.tracing)  # off unless configured (services/edge/tracing.py)
        self.openapi: dict[str, Any] | None = None  # built on first request (needs a loaded engine)

    @property
    def models(self) -> list[ModelEntry]:
        """The models this edge serves (all of the catalog's in routed mode, one in direct mode)."""
        return [entry for entry in self.catalog.models if entry.name in self.engines]

    def is_ready(self, entry: ModelEntry) -> bool:
        self.readiness.start()  # lazily: the replica's event loop only exists once requests arrive
        return self.readiness.is_ready(entry.deployment_name) and self.engines[entry.name].ready()

    def state(self, entry: ModelEntry) -> ModelState:
        """Serve's view of the model: running, starting, zero or unavailable."""
        return "running" if self.is_ready(entry) else self.readiness.state(entry.deployment_name)

    async def states(self) -> dict[str, ModelState]:
        """What `/v1/models` says of each model: Serve's view, and `asleep` for a running model whose
        every replica sleeps (the hub hears it from the engines; asked only where a model sleeps)."""
        states = {entry.name: self.state(entry) for entry in self.models}
        if any(entry.sleep_after_s is not None for entry in self.models):
            try:
                sleeping = await self.records.hub.sleeping_models.remote()
            except Exception:  # the hub restarting: Serve's view alone
                logger.warning("could not ask the metrics hub which models sleep", exc_info=True)
                sleeping = []
            states |= {model: "asleep" for model in sleeping if states.get(model) == "running"}
        return states

    async def warm(self, timeout_s: float) -> None:
        """Before this edge takes traffic (a router replica just started, rolled or replaced): Serve's
        view of the engines read once and each running model's handle told of its replicas, so its
        first requests are not answered 503 as if the models were still loading."""
        await self.readiness.refresh()
        self.readiness.start()
        for _ in range(int(timeout_s / WARM_POLL_S)):  # a handle hears of its replicas by Serve's long poll
            waiting = [entry.name for entry in self.models if self.readiness.is_ready(entry.deployment_name)]
            if all(self.engines[name].ready() for name in waiting):
                return
            await asyncio.sleep(WARM_POLL_S)

    async def adapters(self) -> dict[str, ModelEntry]:
        """Every LoRA adapter served, with its base model's entry (a catalog name always wins)."""
        adapters: dict[str, ModelEntry] = {}
        for entry in self.models:
            if entry.lora is not None and self.is_ready(entry):
                for name in await self.engines[entry.name].adapter_names(ADAPTER_LIST_MAX_AGE_S):
                    if self.catalog.resolve(name) is None:
                        adapters.setdefault(name, entry)
        return adapters

    async def resolve(self, model: str) -> Target:
        entry = self.catalog.resolve(model)
        target = Target(entry) if entry is not None and entry.name in self.engines else None
        if target is None:
            base = (await self.adapters()).get(model)
            target = Target(base, model) if base is not None else None
        if target is None:
            raise APIError(
                404,
                f"The model `{model}` does not exist.",
                param="model",
                code=Code.MODEL_NOT_FOUND,
                reason=Code.MODEL_NOT_FOUND,
            )
        if not self.is_ready(target.entry) and not target.entry.scales_to_zero:  # that one is held (_head)
            raise _retry_later(
                f"model `{target.entry.name}` is still loading; retry shortly", Code.MODEL_NOT_READY, target.entry.name
            )
        return target

    async def forward(self, route: RouteKind | None, request: Request) -> Response:
        """Serve one engine route; `route` None picks chat or completions by the body (/invocations)."""
        span = self.tracing.start_request(request.headers, route or "invocations")
        try:
            response = await self._forward(route, request, span)
        except APIError as error:
            self.tracing.end(span, error.status)
            raise
        except BaseException:
            self.tracing.end(span, 500)
            raise
        if not isinstance(response, RelayResponse):  # a stream's span ends with the stream
            self.tracing.end(span, response.status_code)
        return response

    async def _forward(self, route: RouteKind | None, request: Request, span: Span) -> Response:
        arrived = time.perf_counter()
        ingress_s = _ingress_seconds(request)
        options = self.catalog.edge
        deadline = asyncio.get_running_loop().time() + options.request_timeout_s
        placed = "none"
        try:
            body = await read_json_body(request, options.max_body_bytes)
            envelope = envelope_of(body)
            target = await self.resolve(envelope.model)
            placed = target.model_name
        finally:
            if self.served_by == "platform":  # HAProxy could not place it (services/haproxy/rules.py)
                self.records.add(PlacedRecord(placed))
        entry, model_name = target.entry, target.model_name
        hold_s = None if self.is_ready(entry) else entry.hold_timeout_s  # held while a replica starts (_head)
        if hold_s is not None:
            deadline += hold_s
        span.set_attribute("gen_ai.request.model", model_name)
        route = route or ("chat" if "messages" in body else "completions")
        if route == "responses" and envelope.background:
            # A background response runs after its request has ended, outside admission and deadlines.
            raise APIError(400, BACKGROUND_REFUSED, param="background", reason=Code.INVALID_REQUEST)
        tenant: str = request.state.tenant
        service_class, classed = options.service_classes.class_of(tenant)
        if options.service_classes.enabled and route in GENERATIVE:
            # vLLM's `priority` (lower runs first): a request may lower its own, never rise above its class's.
            requested = classed.priority if envelope.priority is None else envelope.priority
            body["priority"] = max(classed.priority, requested)
        media = None
        if "messages" in body:
            try:
                with self.tracing.phase(span, "images"):
                    media = await prepare_images(
                        body,
                        model=model_name,
                        accepts_images="image" in entry.modalities,
                        max_images=entry.max_images,
                        fetcher=self.media,
                    )
            except MediaError as error:
                raise APIError(
                    400,
                    str(error),
                    param="messages",
                    code=error.code,
                    model=model_name,
                    base_model=entry.name,
                    reason=error.code,
                ) from None
        try:
            with self.tracing.phase(span, "admission"):
                admitted = await self.limits.admit(entry.name, tenant, estimate_tokens(body))
        except Rejected as rejected:
            raise APIError(
                429,
                str(rejected),
                code=rejected.reason,
                model=model_name,
                base_model=entry.name,
                reason=rejected.reason,
                headers={"Retry-After": str(rejected.retry_after_s)},
            ) from None
        except LimiterUnavailable as error:
            raise _retry_later(
                "the admission limiter is unavailable; retry shortly", Code.LIMITER_UNAVAILABLE, model_name, entry.name
            ) from error
        streaming = False
        try:
            request_id = _request_id(request)
            call = EngineCall(
                route,
                body,
                request_id,
                session_id=request.headers.get(self.catalog.edge.session_header) or None,
                trace_headers=self.tracing.headers_for(span),
            )
            queued_s = admitted.queued_s if admitted else None
            edge_s = time.perf_counter() - arrived - (queued_s or 0.0)  # waiting for a slot is not overhead
            opened = time.perf_counter()
            stream, head = await self._open(entry, model_name, call, span, deadline)
            record = CompletionRecord(
                model_name,
                success=head.status == 200,
                base_model=entry.name,
                vision_s=media.seconds if media else None,
                ingress_s=ingress_s,
                edge_s=edge_s,
                tenant=tenant,
                service_class=service_class,
                queued_s=queued_s,
                held_s=time.perf_counter() - opened if hold_s is not None else None,
            )
            if head.body is not None:
                if head.outcome is not None:
                    record.ttft_s = record.e2e_s = time.perf_counter() - arrived
                    record.apply(head.outcome)
                if route in GENERATIVE:  # NIM's request metrics count completions, not tokenize calls
                    self.records.add(record)
                retry = RETRY_LATER if head.status == 503 else None  # an engine waking without room on its GPU
                return Response(head.body, status_code=head.status, media_type="application/json", headers=retry)
            streaming = True

            def stream_ended() -> None:
                self.limits.release(admitted)
                self.tracing.end(span, 200)

            return RelayResponse(
                StreamRelay(
                    stream,
                    request_id,
                    record,
                    arrived,
                    self.records,
                    deadline,
                    stream_ended,
                    lambda: self.readiness.mark_failed(entry.deployment_name),
                )
            )
        finally:
            if not streaming:  # a stream releases its slot when it ends
                self.limits.release(admitted)

    async def _head(self, entry: ModelEntry, model_name: str, stream: EngineStream, deadline: float) -> Head:
        """The stream's head by the request's deadline. A model with no running replica (scaled to zero,
        or its replica still starting) is held: Serve starts one for the request waiting in the handle,
        and the request waits up to the model's hold timeout for it to run, then gets a 503."""
        hold_s = entry.hold_timeout_s if not self.is_ready(entry) else None
        if hold_s is None:  # the common case: no task or wait added to the request path
            async with asyncio.timeout_at(deadline):
                return await stream.head()
        loop = asyncio.get_running_loop()
        held_until: float | None = loop.time() + hold_s
        head = asyncio.ensure_future(stream.head())
        try:
            while True:
                limit = deadline if held_until is None else min(deadline, held_until)
                done, _ = await asyncio.wait({head}, timeout=max(0.0, limit - loop.time()))
                if done:
                    return head.result()
                if held_until is None or loop.time() >= deadline:
                    raise TimeoutError
                if not self.is_ready(entry):
                    stream.cancel()
                    raise _retry_later(
                        f"model `{entry.name}` did not start within {hold_s:g}s; retry shortly",
                        Code.MODEL_NOT_READY,
                        model_name,
                        entry.name,
                    )
                held_until = None  # a replica runs: the request's own deadline from here
        finally:
            head.cancel()

    async def lookup(self, route: RouteKind, response_id: str, request: Request) -> Response:
        """GET or cancel a stored Responses API answer. Its id names the engine replica that holds
        it (services/routing/response_ids.py), not its model: each model is asked in turn, and the
        request router sends the call to the named replica where that model has it."""
        if request.query_params.get("stream", "false").lower() not in ("false", "0"):
            raise APIError(400, STREAMED_LOOKUP_REFUSED, param="stream", reason=Code.INVALID_REQUEST)
        span = self.tracing.start_request(request.headers, route)
        deadline = asyncio.get_running_loop().time() + self.catalog.edge.request_timeout_s
        call = EngineCall(route, {"response_id": response_id}, _request_id(request))
        status = 200
        try:
            for entry in [entry for entry in self.models if self.is_ready(entry)]:
                stream, head = await self._open(entry, entry.name, call, span, deadline)
                stream.cancel()  # a lookup's answer is complete in its head
                if head.status != 404:
                    status = head.status
                    return Response(head.body, status_code=head.status, media_type="application/json")
            status = 404
            raise APIError(404, f"Response with id '{response_id}' not found.", param="response_id")
        finally:
            self.tracing.end(span, status)

    async def _open(
        self, entry: ModelEntry, model_name: str, call: EngineCall, span: Span, deadline: float
    ) -> tuple[EngineStream, Head]:
        """The engine stream and its head. A replica lost before it answered (routed mode) is tried
        once more, on another, when the model has one: nothing has reached the client yet, and
        Serve's router no longer chooses a replica it found unavailable."""
        for attempt in (1, 2):
            stream = self.engines[entry.name].open(call)
            try:
                with self.tracing.phase(span, "engine.head"):
                    return stream, await self._head(entry, model_name, stream, deadline)
            except TimeoutError:
                stream.cancel()
                raise APIError(
                    504,
                    "the request exceeded its deadline and was aborted",
                    code=Code.TIMEOUT,
                    model=model_name,
                    base_model=entry.name,
                    reason=Code.TIMEOUT,
                ) from None
            except REPLICA_GONE as error:
                self.readiness.mark_failed(entry.deployment_name)
                if attempt == 1 and self.readiness.is_ready(entry.deployment_name):
                    logger.warning(
                        "%s: %s lost a replica before answering; trying another", call.request_id, entry.name
                    )
                    continue
                raise _retry_later(
                    f"model `{entry.name}` is unavailable right now; retry shortly",
                    Code.REPLICA_UNAVAILABLE,
                    model_name,
                    entry.name,
                ) from error
        raise AssertionError("the second attempt returns or raises")
