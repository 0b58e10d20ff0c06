"""Property-based fuzzing (hypothesis) of everything that parses client or operator input:
request bodies through the live router (never a 5xx), image references and image bytes (only
MediaError), catalogs (only CatalogError). SLMSERVE_FUZZ_EXAMPLES sets the budget: small in
`make test`, >= 1000 per property in `make fuzz`."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.admission import estimate_tokens
from services.catalog import CatalogError, parse_catalog
from services.media import MediaError, MediaFetcher, MediaPolicy, _data_url_bytes, _decode_image, prepare_images

EXAMPLES = int(os.environ.get("SLMSERVE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

json_scalars = (st.none() | st.booleans() | st.integers(-(2**40), 2**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)
FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "logprobs",
          "top_logprobs", "response_format", "stream_options", "tools", "tool_choice", "presence_penalty",
          "min_p", "top_k", "ignore_eos", "prompt", "max_completion_tokens", "logit_bias", "user"]
MODELS = ["smollm2-135m-instruct", "default", "tiny-phimoe", "vision", "nope", ""]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                 "content": st.text(max_size=60) | json_values})
request_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | json_scalars, "messages": st.lists(message, max_size=3) | json_values},
    optional={name: json_values for name in FIELDS if name not in ("model", "messages")})


def _bounded(body: dict) -> dict:
    # Keep generation short: the property is about parsing, not about waiting for tokens.
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and body[key] > 8:
            body[key] = 8
    body.setdefault("max_tokens", 4)
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    return body


def test_fuzzed_chat_and_completion_bodies_never_get_a_5xx(live_server):
    @FUZZ
    @given(body=request_bodies, route=st.sampled_from(["chat/completions", "completions"]))
    def check(body: dict, route: str) -> None:
        response = live_server.http.post(f"/v1/{route}", json=_bounded(body), timeout=120)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert live_server.http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_fuzzed_raw_bodies_never_get_a_5xx(live_server):
    @FUZZ
    @given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def check(raw: bytes) -> None:
        response = live_server.http.post("/v1/chat/completions", content=raw,
                                         headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code < 500, (response.status_code, response.text[:300])

    check()


@FUZZ
@given(messages=json_values, model_accepts_images=st.booleans(), limit=st.integers(0, 3))
def test_image_references_raise_only_media_errors(messages, model_accepts_images, limit):
    assume("://" not in repr(messages))  # never send traffic anywhere: URLs are the live tests' job
    fetcher = MediaFetcher(MediaPolicy(fetch_timeout_s=0.5))

    async def run() -> None:
        try:
            await prepare_images({"messages": messages}, model="m", accepts_images=model_accepts_images,
                                 max_images=limit, fetcher=fetcher)
        except MediaError:
            pass

    asyncio.run(run())


@FUZZ
@given(data=st.binary(max_size=2048), header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff",
                                                              b"RIFF\x00\x00\x00\x00WEBP"]))
def test_image_bytes_raise_only_media_errors(data, header):
    try:
        _decode_image(header + data, MediaPolicy(max_image_pixels=4096 * 4096))
    except MediaError:
        pass


@FUZZ
@given(url=st.text(max_size=80))
def test_data_urls_raise_only_media_errors(url):
    try:
        _data_url_bytes("data:" + url, MediaPolicy())
    except MediaError:
        pass


@FUZZ
@given(data=json_values)
def test_catalogs_raise_only_catalog_errors(data):
    try:
        parse_catalog(data)
    except CatalogError:
        pass


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["prompt", "messages", "max_tokens", "max_completion_tokens"]),
                            json_values))
def test_token_estimates_never_fail(body):
    assert estimate_tokens(body) >= 0
