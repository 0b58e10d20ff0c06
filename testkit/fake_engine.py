"""The unit tier's engine: a scripted implementation of services/engine/interface.py's `Engine`, and the
real edge (services/edge) built around it and served through an ASGI transport, with no Ray and no
vLLM. What an engine does is scripted per request (`Answer`, `Stream`, `Lost`, `Hang`), so error
shapes, deadlines, retries, strict types, auth and the OpenAPI document are tested in milliseconds;
everything that needs vLLM or Ray stays in tests/live.

Two stand-ins besides the engine, each for something Ray owns: `InProcessHandle` calls one of our own
deployments (the metrics hub, the limit broker) in this process where Serve would send a handle
call, and `ScriptedReadiness` answers what Serve's controller would say about a deployment.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from ray.serve.exceptions import DeploymentUnavailableError

from services.core.catalog import Catalog, parse_catalog
from services.edge.app import build_app
from services.edge.edge import Edge
from services.edge.limits import LimitBroker, has_limits
from services.engine.protocol import EngineCall, Head, Outcome
from services.engine.sse import DONE
from services.metrics.hub import MetricsHub
from services.metrics.records import RecordBuffer


@dataclass
class Answer:
    """A complete JSON answer (an error, or a non-streamed completion)."""

    status: int = 200
    body: bytes = b'{"object":"chat.completion","choices":[{"index":0,"finish_reason":"stop"}]}'
    outcome: Outcome | None = field(default_factory=lambda: Outcome(3, 2, "stop"))
    delay_s: float = 0.0  # before the head (a replica that is still starting)


@dataclass
class Stream:
    """A 200 head, then SSE frames exactly as given, the outcome, and [DONE] unless `done` is off."""

    frames: list[str] = field(default_factory=lambda: ['data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'])
    outcome: Outcome = field(default_factory=lambda: Outcome(3, 1, "stop"))
    done: bool = True
    pause_s: float = 0.0  # between frames


@dataclass
class Lost:
    """The replica is gone before it answered (what a dead Serve replica raises)."""


@dataclass
class Hang:
    """No head, ever (the deadline's case)."""


Script = Answer | Stream | Lost | Hang


class ScriptedStream:
    def __init__(self, step: Script) -> None:
        self.step = step
        self.cancelled = False

    async def head(self) -> Head:
        step = self.step
        if isinstance(step, Lost):
            raise DeploymentUnavailableError("scripted: the replica is gone")
        if isinstance(step, Hang):
            await asyncio.Event().wait()
        if isinstance(step, Answer):
            await asyncio.sleep(step.delay_s)
            return Head(step.status, step.body, step.outcome)
        return Head(200, None, None)

    async def _items(self) -> AsyncIterator[str | Outcome]:
        assert isinstance(self.step, Stream)
        for frame in self.step.frames:
            await asyncio.sleep(self.step.pause_s)
            yield frame
        yield self.step.outcome
        if self.step.done:
            yield DONE

    def __aiter__(self) -> AsyncIterator[str | Outcome]:
        return self._items()

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedEngine:
    """Plays `script` one step per request (the last step repeats); keeps every call and stream."""

    def __init__(self, *script: Script, adapters: list[str] | None = None) -> None:
        self.script: list[Script] = list(script) or [Answer()]
        self.calls: list[EngineCall] = []
        self.streams: list[ScriptedStream] = []
        self.adapters = adapters or []

    def open(self, call: EngineCall) -> ScriptedStream:
        self.calls.append(call)
        step = self.script[min(len(self.calls), len(self.script)) - 1]
        self.streams.append(ScriptedStream(step))
        return self.streams[-1]

    def ready(self) -> bool:
        return True

    async def request_schemas(self) -> dict[str, dict[str, Any]]:
        return {
            kind: {"title": title, "type": "object", "properties": {"model": {"type": "string"}}}
            for kind, title in (("chat", "ChatCompletionRequest"), ("completions", "CompletionRequest"))
        }

    async def adapter_names(self, max_age_s: float) -> list[str]:
        return list(self.adapters)

    async def profile(self) -> dict[str, Any] | None:
        return None


class _InProcessMethod:
    def __init__(self, method: Any) -> None:
        self.method = method

    async def _call(self, *args: Any, **kwargs: Any) -> Any:
        result = self.method(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self._call(*args, **kwargs))


class InProcessHandle:
    """Stands in for a Serve DeploymentHandle to one of our deployments: `handle.m.remote(...)` runs
    `obj.m(...)` in this event loop."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self.target, name))


@dataclass
class ScriptedReadiness:
    """What Serve's controller would say: every deployment ready unless named in `loading`."""

    loading: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)

    def start(self) -> None:
        pass

    async def refresh(self) -> None:
        pass

    def is_ready(self, deployment_name: str) -> bool:
        return deployment_name not in self.loading

    def state(self, deployment_name: str) -> str:
        return "starting" if deployment_name in self.loading else "running"

    def mark_failed(self, deployment_name: str) -> None:
        self.failed.append(deployment_name)


MODELS = [
    {"name": "text", "aliases": ["default"], "source": "embedded://smollm2-135m-instruct"},
    {"name": "vision", "source": "generated://tiny-phi3v", "modalities": ["text", "image"]},
]


def catalog_of(**edge: Any) -> Catalog:
    """A two-model catalog (no engine starts from it here) with these `edge:` options."""
    return parse_catalog({"edge": edge, "models": MODELS})


@dataclass
class EdgeUnderTest:
    edge: Edge
    app: FastAPI
    engines: dict[str, ScriptedEngine]
    readiness: ScriptedReadiness
    hub: MetricsHub

    def client(self, **headers: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://edge.test", headers=headers, timeout=10)


@contextmanager
def edge_with(
    catalog: Catalog | None = None,
    engines: dict[str, ScriptedEngine] | None = None,
    *,
    served_by: str = "router",
    readiness: ScriptedReadiness | None = None,
) -> Iterator[EdgeUnderTest]:
    """The real edge and its FastAPI app over scripted engines (default: one `Answer()` per model),
    with the real metrics hub and, when the catalog sets limits, the real limit broker, in process."""
    catalog = catalog or catalog_of()
    engines = engines or {entry.name: ScriptedEngine() for entry in catalog.models}
    readiness = readiness or ScriptedReadiness()
    hub = MetricsHub({entry.name: ("app", entry.deployment_name) for entry in catalog.models}, catalog.tenants)
    # recovery_s=0: a first broker, with no edge's tickets to wait for (its restart is tests/unit/test_limits.py's)
    broker = (
        InProcessHandle(LimitBroker(catalog.model_dump(mode="json"), recovery_s=0)) if has_limits(catalog) else None
    )
    records = RecordBuffer(InProcessHandle(hub))
    edge = Edge(catalog, dict(engines), records, readiness, served_by=served_by, limit_broker=broker)
    yield EdgeUnderTest(edge, build_app(edge), engines, readiness, hub)
