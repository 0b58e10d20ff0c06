"""Token buckets, admission bounds and API-key checks on their own."""

from __future__ import annotations

import pytest

from services.edge.admission import Admission, RateLimit, Rejected, TokenBucket, estimate_tokens
from services.edge.auth import ANONYMOUS, KeyRing


def test_token_bucket_refills_over_time():
    bucket = TokenBucket(rate_per_s=2, capacity=4, updated=0.0)
    assert bucket.wait_for(4, now=0.0) == 0
    bucket.take(4)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(0.5)
    assert bucket.wait_for(1, now=0.5) == 0


def test_in_flight_bound_and_release():
    admission = Admission({"m": 2}, {}, RateLimit())
    admission.admit("m", "t", 10)
    admission.admit("m", "t", 10)
    with pytest.raises(Rejected) as raised:
        admission.admit("m", "t", 10)
    assert raised.value.reason == "queue_full" and raised.value.retry_after_s >= 1
    admission.release("m", "t")
    admission.admit("m", "t", 10)


def test_per_tenant_rates_are_independent():
    admission = Admission({"m": None}, {"small": RateLimit(requests_per_minute=2)}, RateLimit())
    admission.admit("m", "small", 1)
    admission.admit("m", "small", 1)
    with pytest.raises(Rejected) as raised:
        admission.admit("m", "small", 1)
    assert raised.value.reason == "rate_limited_requests"
    for _ in range(10):
        admission.admit("m", "other", 1)  # the default limit is unlimited


def test_token_rate_counts_prompt_and_output():
    admission = Admission({"m": None}, {}, RateLimit(tokens_per_minute=100))
    admission.admit("m", "t", 90)
    with pytest.raises(Rejected) as raised:
        admission.admit("m", "t", 20)
    assert raised.value.reason == "rate_limited_tokens"
    assert estimate_tokens({"messages": [{"content": "x" * 400}], "max_tokens": 50}) >= 150


def test_keyring_tenants_and_rejections(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nteam-a:sk-aaa\nsk-bare\n")
    ring = KeyRing.load("team-b:sk-bbb", keys)
    assert ring.enabled
    assert ring.tenant_for("Bearer sk-aaa") == "team-a"
    assert ring.tenant_for("bearer sk-bbb") == "team-b"
    assert ring.tenant_for("Bearer sk-bare") == "key-3"  # the third entry (inline ones come first)
    for bad in (None, "", "Bearer", "Basic sk-aaa", "Bearer sk-aaa-x", "Bearer SK-AAA"):
        assert ring.tenant_for(bad) is None
    assert KeyRing.load().tenant_for(None) == ANONYMOUS


def test_keys_are_not_kept_in_clear():
    ring = KeyRing(["team:sk-secret-value"])
    assert "sk-secret-value" not in repr(ring.__dict__)


def test_token_estimate_is_never_negative():
    # Found by fuzzing: max_tokens=-2 gave -1, a refund to the caller's token bucket.
    assert estimate_tokens({"prompt": None, "messages": None, "max_tokens": -2}) >= 0
    assert estimate_tokens({"messages": "x", "max_tokens": True}) == 256


def test_which_requests_a_limit_applies_to():
    admission = Admission(
        {"bounded": 2, "free": None},
        {"vip": RateLimit(), "small": RateLimit(requests_per_minute=3)},
        RateLimit(tokens_per_minute=100),
    )
    assert admission.applies("bounded", "vip")  # the model's bound covers everyone
    assert not admission.applies("free", "vip")  # listed without rates: unlimited despite the default
    assert admission.applies("free", "small") and admission.applies("free", "anyone-else")  # the default
    assert not Admission({"free": None}, {}, RateLimit()).applies("free", "anyone")
