"""Every import of vLLM internals lives here, so one module absorbs vLLM's moves between
releases (0.24 on the GPU machine, 0.32 on CPU/CI). Names fall back from the newest layout
to older ones; nothing else in slmserve imports `vllm` directly.

Names are looked up on first use, not at import: the `slmserve serve` driver imports the engine
deployment's module to build the applications, and vLLM's import (torch with it) cost it about 5 s
of CPU before the first replica could start. Only the processes that run an engine import vLLM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# The process title vLLM gives its workers (the processes that run the model; on a CPU node, bound to
# cores): how a check of where processes run tells them apart (tests/live/test_direct_mode.py).
WORKER_PROCESS_TITLE = "VLLM::Worker"


def _first(*candidates: tuple[str, str]) -> Any:
    """The first `module:attribute` pair that imports, newest layout first."""
    errors = []
    for module_name, attribute in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(module_name)
            return getattr(module, attribute)
        except (ImportError, AttributeError) as error:
            errors.append(f"{module_name}.{attribute}: {error}")
    raise ImportError("no supported vLLM layout found:\n  " + "\n  ".join(errors))


def vllm_version() -> str:
    import vllm

    version: str = vllm.__version__
    return version


def _optional(*candidates: tuple[str, str]) -> Any:
    """`_first`, or None where this vLLM has no such thing (a route it does not serve)."""
    try:
        return _first(*candidates)
    except ImportError:
        return None


def _client_errors() -> tuple[type[Exception], ...]:
    try:  # 0.32 raises typed client errors; 0.24's VLLMValidationError is a ValueError
        from vllm.exceptions import VLLMClientError

        return (ValueError, TypeError, OverflowError, VLLMClientError)
    except ImportError:
        return (ValueError, TypeError, OverflowError)


# name -> how it is found: every layout it may have, newest first; `_optional` where a release may lack it.
_LOOKUPS: dict[str, Callable[[], Any]] = {
    "ChatCompletionRequest": lambda: _first(
        ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
        ("vllm.entrypoints.openai.protocol", "ChatCompletionRequest"),
    ),
    "CompletionRequest": lambda: _first(
        ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest"),
        ("vllm.entrypoints.openai.protocol", "CompletionRequest"),
    ),
    "BatchChatCompletionRequest": lambda: _optional(
        ("vllm.entrypoints.openai.chat_completion.protocol", "BatchChatCompletionRequest"),  # 0.32
    ),
    "TokenizeRequest": lambda: _optional(
        ("vllm.entrypoints.serve.tokenize.protocol", "TokenizeRequest"),  # 0.32
        ("vllm.entrypoints.openai.protocol", "TokenizeRequest"),
    ),
    "DetokenizeRequest": lambda: _optional(
        ("vllm.entrypoints.serve.tokenize.protocol", "DetokenizeRequest"),
        ("vllm.entrypoints.openai.protocol", "DetokenizeRequest"),
    ),
    "ResponsesRequest": lambda: _optional(
        ("vllm.entrypoints.openai.responses.protocol", "ResponsesRequest"),  # 0.32
        ("vllm.entrypoints.openai.protocol", "ResponsesRequest"),
    ),
    "ErrorResponse": lambda: _first(
        ("vllm.entrypoints.serve.engine.protocol", "ErrorResponse"),  # 0.32
        ("vllm.entrypoints.openai.engine.protocol", "ErrorResponse"),  # 0.24
        ("vllm.entrypoints.openai.protocol", "ErrorResponse"),
    ),
    "CLIENT_ERRORS": _client_errors,
    "validation_exception_handler": lambda: _optional(
        ("vllm.entrypoints.serve.exception_handling.handlers.validation", "validation_exception_handler"),  # 0.32
        ("vllm.entrypoints.openai.api_server", "validation_exception_handler"),
    ),
    "make_arg_parser": lambda: _first(
        ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
        ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),
    ),
    "FlexibleArgumentParser": lambda: _first(
        ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
        ("vllm.utils", "FlexibleArgumentParser"),
    ),
    "init_app_state": lambda: _first(
        ("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),
        ("vllm.entrypoints.openai.api_server", "init_app_state"),
    ),
    "build_engine_client": lambda: _first(
        ("vllm.entrypoints.launchers.api_server.entry", "build_async_engine_client_from_engine_args"),
        ("vllm.entrypoints.openai.api_server", "build_async_engine_client_from_engine_args"),
    ),
}


@functools.cache
def _resolve(name: str) -> Any:
    return _LOOKUPS[name]()


def __getattr__(name: str) -> Any:  # PEP 562: `vllm_compat.ErrorResponse` resolves on first use
    if name in _LOOKUPS:
        return _resolve(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # what the lookups above give, for the type checker
    ChatCompletionRequest: Any
    CompletionRequest: Any
    BatchChatCompletionRequest: Any
    TokenizeRequest: Any
    DetokenizeRequest: Any
    ResponsesRequest: Any
    ErrorResponse: Any
    CLIENT_ERRORS: tuple[type[Exception], ...]


def traced_request(trace_headers: dict[str, str] | None) -> Any:
    """What vLLM's serving layer reads of its `raw_request` (headers, state), holding only the W3C
    trace context, so that the engine's span joins the edge's trace; None (vLLM's default) without one."""
    if not trace_headers:
        return None
    from types import SimpleNamespace

    from starlette.datastructures import Headers, State

    return SimpleNamespace(headers=Headers(trace_headers), state=State())


async def validation_error(errors: list[Any]) -> tuple[str, str | None] | None:
    """(message, param) of the 400 `vllm serve` answers when its request model refuses a body with
    these pydantic `errors`: vLLM's own handler, as FastAPI would call it (locations under `body`).
    None where this release has no such handler or it cannot be called this way."""
    handler = _resolve("validation_exception_handler")
    if handler is None:
        return None
    import json
    from types import SimpleNamespace

    from fastapi.exceptions import RequestValidationError

    located = [{**error, "loc": ("body", *error["loc"])} for error in errors]
    args = SimpleNamespace(log_error_stack=False)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(args=args)), state=SimpleNamespace())
    try:
        response = await handler(request, RequestValidationError(located))
        error = json.loads(response.body)["error"]
    except Exception:  # a release whose handler reads more of the request: slmserve's own wording
        return None
    return str(error["message"]), error.get("param")


def _lora_request(kind: str, **fields: Any) -> Any:
    """vLLM's Load/UnloadLoRAAdapterRequest, looked up on first use (only LoRA-serving engines need it)."""
    return _first(
        ("vllm.entrypoints.serve.lora.protocol", kind),  # 0.32
        ("vllm.entrypoints.openai.lora.protocol", kind),
        ("vllm.entrypoints.openai.protocol", kind),
    )(**fields)


def error_from_exception(serving: Any, error: Exception) -> Any:
    """vLLM's own mapping of an exception to an ErrorResponse (status, param)."""
    try:
        return serving.create_error_response(error)
    except TypeError:  # releases whose create_error_response takes only a message
        return serving.create_error_response(str(error))


def engine_namespace(model: str, served_names: list[str], engine_args: dict[str, Any]) -> argparse.Namespace:
    """`vllm serve`'s own parsed arguments, with the catalog's engine_args laid over its defaults.

    Using vLLM's parser keeps every frontend default (chat template handling, tool parsing, ...)
    exactly as bare `vllm serve` has it. Unknown keys are refused, so a typo never goes silent.
    """
    parser = _resolve("make_arg_parser")(_resolve("FlexibleArgumentParser")())
    namespace = parser.parse_args(["--model", model])
    unknown = sorted(key for key in engine_args if not hasattr(namespace, key))
    if unknown:
        raise ValueError(f"unknown vLLM engine argument(s): {', '.join(unknown)}")
    for key, value in engine_args.items():
        setattr(namespace, key, value)
    namespace.served_model_name = served_names
    parsed: argparse.Namespace = namespace
    return parsed


class BoundedStore(collections.OrderedDict[Any, Any]):
    """A dict that forgets its oldest entries beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.capacity:
            self.popitem(last=False)


class ServingStack:
    """A started AsyncLLM plus vLLM's OpenAI serving objects for it."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace
        self._exit_stack = contextlib.AsyncExitStack()
        self.engine: Any = None
        self.chat: Any = None
        self.completion: Any = None
        self.chat_batch: Any = None  # /v1/chat/completions/batch, where this vLLM serves it
        self.tokenization: Any = None  # /tokenize and /detokenize
        self.responses: Any = None  # /v1/responses
        self.models: Any = None  # vLLM's OpenAIServingModels: the served names and LoRA adapters

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs

        engine_args = AsyncEngineArgs.from_cli_args(self.namespace)
        self.engine = await self._exit_stack.enter_async_context(_resolve("build_engine_client")(engine_args))
        state = State()
        supported_tasks = await self.engine.get_supported_tasks()
        await _resolve("init_app_state")(self.engine, state, self.namespace, supported_tasks)
        self.chat = getattr(state, "openai_serving_chat", None)
        self.completion = getattr(state, "openai_serving_completion", None)
        self.chat_batch = getattr(state, "openai_serving_chat_batch", None)
        self.tokenization = getattr(state, "serving_tokenization", None) or getattr(
            state, "openai_serving_tokenization", None
        )
        self.models = state.openai_serving_models
        self.responses = getattr(state, "openai_serving_responses", None)

    def keep_responses(self, count: int) -> None:
        """Let `store` keep up to `count` responses (and their conversations) in this engine for
        `previous_response_id` and lookups, oldest dropped first. vLLM's own switch is an environment
        variable read at start, and its stores never drop anything."""
        if self.responses is None or count <= 0:
            return
        self.responses.enable_store = True
        for name in ("response_store", "msg_store", "event_store"):
            if isinstance(getattr(self.responses, name, None), dict):
                setattr(self.responses, name, BoundedStore(count))

    def base_model_config(self) -> dict[str, Any]:
        """The base model's Hugging Face config as a dict (what LoRA tensors must fit)."""
        config: dict[str, Any] = self.engine.model_config.hf_config.to_dict()
        return config

    async def load_adapter(self, name: str, path: str) -> str | None:
        """Register a LoRA adapter under `name` through vLLM's own runtime-loading path (which loads
        it into the engine once, to check it); the error message if that failed."""
        request = _lora_request("LoadLoRAAdapterRequest", lora_name=name, lora_path=path)
        result = await self.models.load_lora_adapter(request)
        return result.error.message if isinstance(result, _resolve("ErrorResponse")) else None

    async def unload_adapter(self, name: str) -> None:
        await self.models.unload_lora_adapter(_lora_request("UnloadLoRAAdapterRequest", lora_name=name))

    async def loaded_adapters(self) -> list[str]:
        """Names of the registered adapters the engine holds in its LoRA cache right now."""
        ids = await self.engine.list_loras()
        return sorted(request.lora_name for request in self.models.lora_requests.values() if request.lora_int_id in ids)

    async def sleep(self) -> None:
        """vLLM's sleep level 1: weights to host memory, KV cache (and its prefix cache) dropped."""
        await self.engine.reset_prefix_cache()
        await self.engine.sleep(level=1)

    async def wake_up(self) -> None:
        await self.engine.wake_up()

    async def shutdown(self) -> None:
        await self._exit_stack.aclose()

    def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (running or waiting); 0 when idle."""
        unfinished: int = self.engine.output_processor.get_num_unfinished_requests()
        return unfinished

    async def check_health(self) -> None:
        """Raises if the engine core died (vLLM's own liveness check)."""
        await self.engine.check_health()


def on_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_lora_op_modules() -> list[Any] | None:
    """The modules where vLLM's CPU backend looks up its pure-PyTorch LoRA ops (the ops' own module
    first), or None on any other platform (services/engine/vllm_plugin.py patches them)."""
    if not on_cpu_platform():
        return None
    lora_ops = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
    return [
        lora_ops,
        importlib.import_module("vllm.lora.ops.torch_ops"),
        importlib.import_module("vllm.lora.punica_wrapper.punica_cpu"),
    ]


def shm_spin_condition() -> Any:
    """The class with which a reader of vLLM's shared-memory message queues waits for a write (its
    busy-loop window, `busy_loop_s`, an argument of its constructor), or None where this vLLM has none
    (services/engine/vllm_plugin.py has its readers park on the CPU platform)."""
    return _optional(("vllm.distributed.device_communicators.shm_broadcast", "SpinCondition"))
