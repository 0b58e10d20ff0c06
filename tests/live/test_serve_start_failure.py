"""`slmserve serve` on a catalog whose engine cannot start: it says why and exits, instead of
waiting out its readiness timeout (found on the H200, where a vision engine whose processor failed
left the server "waiting for engines to load..." for 400 s after Serve had given up on it)."""

from __future__ import annotations

import time

import pytest

from services.runtime import DeployFailed
from testkit.serving import catalog_variant, serving

pytestmark = pytest.mark.live  # it starts a Ray and an engine of its own


def impossible_context(catalog: dict) -> None:
    """A context window 500x what SmolLM2 was trained for: vLLM refuses it when the engine starts
    (the catalog itself is valid), so every replica's constructor fails."""
    catalog["models"][0]["engine_args"]["max_model_len"] = 1_000_000
    catalog["models"][0]["deployment"]["max_constructor_retry_count"] = 1  # one start to fail, not three


def test_an_engine_that_cannot_start_ends_the_server_with_serves_reason():
    started = time.monotonic()
    with pytest.raises(DeployFailed) as failure:
        with serving(catalog_variant("cpu", impossible_context), ready_timeout_s=900):
            pass
    waited = time.monotonic() - started
    message = str(failure.value)
    assert "slmserve serve exited with 1" in message
    assert "Serve gave up on engine-smollm2-135m-instruct" in message
    assert "max_model_len" in message  # the constructor's own exception, not just "failed"
    print(f"failed start reported after {waited:.0f} s")  # a TimeoutError at 900 s would fail the raises
