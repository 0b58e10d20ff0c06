"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`, one shape for
every error slmserve returns, whether the edge or vLLM found the problem."""

from __future__ import annotations

import json
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class Code(StrEnum):
    """Every `code` slmserve puts in an error body, and every `reason` of the rejected-requests
    metric: one closed set (the metric's label values stay bounded; clients can rely on them)."""

    # the request itself
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    INVALID_API_KEY = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    MODEL_NOT_FOUND = "model_not_found"
    # images (services/edge/media.py)
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_IMAGES = "too_many_images"
    IMAGE_URL_REFUSED = "image_url_refused"
    IMAGE_FETCH_FAILED = "image_fetch_failed"
    IMAGE_FETCH_TIMEOUT = "image_fetch_timeout"
    MODEL_NOT_MULTIMODAL = "model_not_multimodal"
    # admission (services/edge/admission.py, services/edge/limits.py)
    QUEUE_FULL = "queue_full"
    QUEUE_TIMEOUT = "queue_timeout"
    RATE_LIMITED_REQUESTS = "rate_limited_requests"
    RATE_LIMITED_TOKENS = "rate_limited_tokens"
    LIMITER_UNAVAILABLE = "limiter_unavailable"
    # serving
    MODEL_NOT_READY = "model_not_ready"
    TIMEOUT = "timeout"
    REPLICA_UNAVAILABLE = "replica_unavailable"
    REPLICA_FAILED = "replica_failed"
    INTERNAL_ERROR = "internal_error"


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error body slmserve sends; the OpenAPI document's error schema is this model's."""

    error: ErrorDetail


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    detail = ErrorDetail(message=message, type=error_type(status), param=param, code=code)
    return ErrorBody(error=detail).model_dump()


def error_json(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, param=param, code=code)).encode()


def from_vllm_error(error: Any) -> tuple[int, bytes]:
    """vLLM's ErrorResponse (code = HTTP status as int) -> our status and body."""
    info = error.error
    try:
        status = HTTPStatus(int(info.code)).value
    except (TypeError, ValueError):
        status = 400
    return status, error_json(status, info.message, param=info.param)


class APIError(Exception):
    """Raised anywhere on the request path; rendered as an OpenAI-style error body. `model` (an
    adapter's name for adapter requests), `base_model` and `reason` label the rejected-requests
    metric when `reason` is set (services/metrics/records.py RejectionRecord)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: Code | None = None,
        headers: dict[str, str] | None = None,
        model: str = "",
        reason: Code | None = None,
        base_model: str = "",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}
        self.model, self.reason = model, reason
        self.base_model = base_model
