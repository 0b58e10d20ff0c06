"""The request envelope: the part of an OpenAI completion body the edge reads and vouches for.

OpenAI answers 400 for a value of the wrong JSON type, where vLLM's pydantic models would coerce some
("stream": "yes" streams, "max_tokens": "5" is 5). The envelope checks these fields strictly, the same
for every route and model: booleans only true/false, integers only whole JSON numbers without a
fraction (never a boolean), numbers any JSON number; null means unset. Every other field is allowed
and reaches vLLM unchanged (the engine's own validation answers for those), so the envelope never
narrows what vLLM accepts beyond the types.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from services.core.errors import APIError, Code

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
_KINDS = {"bool_type": "boolean", "int_type": "integer", "float_type": "number", "dict_type": "object"}
MODEL_REQUIRED = "`model` is required and must be a string"


class RequestEnvelope(BaseModel):
    """Strict in the fields below; any other field is kept as sent (`model_extra`)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    model: str
    stream: bool | None = None
    echo: bool | None = None
    ignore_eos: bool | None = None
    n: int | None = None
    best_of: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    min_tokens: int | None = None
    seed: int | None = None
    top_k: int | None = None
    top_logprobs: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stream_options: dict[str, Any] | None = None
    max_output_tokens: int | None = None  # the Responses API's
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    priority: int | None = None  # vLLM's; with service classes the edge bounds it (services/edge/edge.py)


def envelope_of(body: dict[str, Any]) -> RequestEnvelope:
    """The body's envelope, or a 400 in OpenAI's shape that names the first bad field."""
    try:
        envelope = RequestEnvelope.model_validate(body)
    except ValidationError as error:
        raise _first_error(error, body) from None
    if not envelope.model:
        raise APIError(400, MODEL_REQUIRED, param="model", reason=Code.INVALID_REQUEST)
    return envelope


def _first_error(error: ValidationError, body: dict[str, Any]) -> APIError:
    first = error.errors()[0]
    field = str(first["loc"][0])
    if field == "model":
        return APIError(400, MODEL_REQUIRED, param="model", reason=Code.INVALID_REQUEST)
    value = body.get(field)
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    kind = _KINDS.get(first["type"], "valid value")
    return APIError(400, f"`{field}` must be a JSON {kind}, not {got}", param=field, reason=Code.INVALID_REQUEST)
