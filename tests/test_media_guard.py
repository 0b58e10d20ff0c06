"""The SSRF guard and image decoding on their own (the live tests cover them through the router)."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from services.media import MediaError, MediaPolicy, URLGuard, _data_url_bytes, _decode_image


def check(url: str, **policy) -> None:
    asyncio.run(URLGuard(MediaPolicy(**policy)).check(url))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.8.9.10/", "http://0.0.0.0/", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/", "http://100.64.0.1/", "http://224.0.0.1/",
    "http://[::1]/", "http://[fe80::1]/", "http://[fd00:ec2::254]/", "http://[::ffff:10.0.0.1]/",
    "http://localhost/",
])
def test_internal_addresses_are_refused(url):
    with pytest.raises(MediaError) as raised:
        check(url)
    assert raised.value.code == "image_url_refused"


def test_public_literal_addresses_pass_and_allow_lists_open_holes():
    check("https://93.184.216.34/cat.png")
    check("http://127.0.0.2:8080/x.png", allow_networks=["127.0.0.2/32"])
    check("http://internal.example/x.png", allow_hosts=["internal.example"])
    with pytest.raises(MediaError):
        check("http://127.0.0.3/x.png", allow_networks=["127.0.0.2/32"])


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x/", "//no-scheme/x.png", "http:///nohost"])
def test_other_schemes_and_malformed_urls_are_refused(url):
    with pytest.raises(MediaError) as raised:
        check(url)
    assert raised.value.code == "image_url_refused"


def _png(size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "blue").save(out, format="PNG")
    return out.getvalue()


def test_decoding_limits():
    policy = MediaPolicy(max_image_bytes=10_000, max_image_pixels=100)
    assert _decode_image(_png(), policy).startswith("data:image/png;base64,")
    with pytest.raises(MediaError, match="pixels"):
        _decode_image(_png((11, 10)), policy)
    with pytest.raises(MediaError, match="bytes"):
        _decode_image(b"\0" * 10_001, policy)
    with pytest.raises(MediaError, match="decoded"):
        _decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 30, policy)


def test_gif_becomes_its_first_frame_as_png():
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "green")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    url = _decode_image(out.getvalue(), MediaPolicy())
    assert url.startswith("data:image/png;base64,")
    first = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert first.getpixel((0, 0))[0] > 200  # red, not green


def test_data_url_must_be_base64():
    with pytest.raises(MediaError, match="base64"):
        _data_url_bytes("data:image/png,rawbytes", MediaPolicy())
