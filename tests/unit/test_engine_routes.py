"""The engine's routes (services/engine/routes.py) on vLLM's own request models, without an engine."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from services.engine import vllm_compat
from services.engine.routes import EngineRoute


def completion_route() -> EngineRoute:
    return EngineRoute(None, "create_completion", TypeAdapter(vllm_compat.CompletionRequest), takes_request_id=True)


def test_a_body_vllm_validates_gets_the_edge_s_request_id():
    request = completion_route().parse({"model": "m", "prompt": "hi", "request_id": "client's"}, "edge-id")
    assert request.request_id == "edge-id" and request.prompt == "hi"


def test_a_body_that_breaks_a_vllm_validator_is_a_value_error_not_a_crash():
    """Found by schemathesis through /invocations: vLLM 0.32's completion validator calls `.get` on
    `structured_outputs`, so a list there raised AttributeError (a 500 in bare vLLM too)."""
    with pytest.raises(ValueError, match="invalid request: AttributeError"):
        completion_route().parse({"model": "m", "prompt": "hi", "structured_outputs": [1]}, "id")


def test_a_body_pydantic_refuses_stays_a_validation_error():
    with pytest.raises(ValidationError):
        completion_route().parse({"model": "m", "prompt": "hi", "max_tokens": "many"}, "id")
