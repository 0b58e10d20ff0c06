"""Property-based fuzzing (hypothesis) of what parses client or operator input, without a server:
image references and image bytes (only MediaError), catalogs (only CatalogError), token estimates.
SLMSERVE_FUZZ_EXAMPLES sets the budget: small in `make test`, >= 1000 per property in `make fuzz`."""

from __future__ import annotations

import asyncio

from hypothesis import assume, given
from hypothesis import strategies as st

from services.core.catalog import CatalogError, MediaPolicy, parse_catalog
from services.edge.admission import estimate_tokens
from services.edge.media import MediaError, MediaFetcher, _data_url_bytes, _decode_image, prepare_images
from testkit.strategies import FUZZ, json_values


@FUZZ
@given(messages=json_values, model_accepts_images=st.booleans(), limit=st.integers(0, 3))
def test_image_references_raise_only_media_errors(messages, model_accepts_images, limit):
    assume("://" not in repr(messages))  # never send traffic anywhere: URLs are the live tests' job
    fetcher = MediaFetcher(MediaPolicy(fetch_timeout_s=0.5))

    async def run() -> None:
        try:
            await prepare_images(
                {"messages": messages},
                model="m",
                accepts_images=model_accepts_images,
                max_images=limit,
                fetcher=fetcher,
            )
        except MediaError:
            pass

    asyncio.run(run())


@FUZZ
@given(
    data=st.binary(max_size=2048),
    header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP"]),
)
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
@given(
    body=st.dictionaries(st.sampled_from(["prompt", "messages", "max_tokens", "max_completion_tokens"]), json_values)
)
def test_token_estimates_never_fail(body):
    assert estimate_tokens(body) >= 0
