"""The MoE and vision deployments next to the text model in one application (the `test`
catalog): routing, streaming, image inputs, and every image and SSRF refusal.

The tiny models have random weights, so these tests check structure (tokens, finish reasons,
image-token growth, routing), never text."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

TEXT, MOE, VISION = "smollm2-135m-instruct", "tiny-phimoe", "tiny-phi3v"
IMAGE_HOST = "127.0.0.2"  # allow-listed in the test catalog; 127.0.0.1 is not


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (48, 48), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def vision_body(*urls: str, model: str = VISION, **extra) -> dict:
    content = [{"type": "text", "text": "What is in the picture?"}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def post(live_server, body: dict) -> httpx.Response:
    return live_server.http.post("/v1/chat/completions", json=body, timeout=60)


def assert_image_error(response: httpx.Response, code: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    return error["message"]


class ImageHandler(BaseHTTPRequestHandler):
    """A local image server standing in for the web (no outside network exists here)."""

    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        routes = {
            "/red.png": lambda: self._send(200, image_bytes(), {"Content-Type": "image/png"}),
            "/hop": lambda: self._send(302, headers={"Location": "/red.png"}),
            "/to-loopback": lambda: self._send(302, headers={"Location": f"http://127.0.0.1:{port}/red.png"}),
            "/to-metadata": lambda: self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
            "/loop": lambda: self._send(302, headers={"Location": "/loop"}),
            "/huge": lambda: self._send(200, b"\0" * (2 * 2**20), {"Content-Type": "image/png"}),
            "/text": lambda: self._send(200, b"hello", {"Content-Type": "text/plain"}),
            "/missing": lambda: self._send(404),
        }
        if self.path == "/slow":
            time.sleep(4)
            return self._send(200, image_bytes(), {"Content-Type": "image/png"})
        routes.get(self.path, lambda: self._send(404))()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer((IMAGE_HOST, 0), ImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{IMAGE_HOST}:{server.server_address[1]}"
    server.shutdown()


def test_models_route_by_name_and_alias(client):
    for name, alias in ((TEXT, "default"), (MOE, "moe"), (VISION, "vision")):
        response = client.chat.completions.create(
            model=alias, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert response.model == name
        assert response.usage.completion_tokens >= 1


def test_moe_chat_and_stream(client):
    response = client.chat.completions.create(
        model=MOE, messages=[{"role": "user", "content": "hello"}], max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 8
    chunks, usage = 0, None
    for chunk in client.chat.completions.create(
        model=MOE,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    ):
        chunks += 1
        usage = chunk.usage or usage
    assert usage.completion_tokens == 12 and chunks >= 3


def test_vision_prompt_tokens_grow_per_image(live_server):
    image = data_url(image_bytes())
    tokens = []
    for count in (0, 1, 2):
        response = post(live_server, vision_body(*[image] * count))
        assert response.status_code == 200, response.text
        tokens.append(response.json()["usage"]["prompt_tokens"])
    per_image = tokens[1] - tokens[0]
    assert per_image >= 4  # 4 image tokens plus their delimiters
    assert tokens[2] - tokens[1] == per_image


def test_vision_streams_like_text(live_server):
    body = vision_body(
        data_url(image_bytes()), stream=True, stream_options={"include_usage": True}, ignore_eos=True, max_tokens=6
    )
    with live_server.http.stream("POST", "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"completion_tokens":6' in lines[-2]


@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_vision_accepts_jpeg_webp_gif(live_server, fmt, mime):
    response = post(live_server, vision_body(data_url(image_bytes(fmt), mime)))
    assert response.status_code == 200, response.text


def test_vision_fetches_allowed_http_url_and_follows_a_safe_redirect(live_server, image_server):
    direct = post(live_server, vision_body(f"{image_server}/red.png"))
    assert direct.status_code == 200, direct.text
    hopped = post(live_server, vision_body(f"{image_server}/hop"))
    assert hopped.status_code == 200, hopped.text
    assert hopped.json()["usage"]["prompt_tokens"] == direct.json()["usage"]["prompt_tokens"]


def test_image_decoding_errors(live_server):
    assert_image_error(post(live_server, vision_body(data_url(b"definitely not an image"))), "invalid_image")
    assert_image_error(post(live_server, vision_body("data:image/png;base64,@@@not-base64@@@")), "invalid_image")
    assert_image_error(post(live_server, vision_body(data_url(image_bytes()[:40]))), "invalid_image")
    assert "BMP" in assert_image_error(
        post(live_server, vision_body(data_url(image_bytes("BMP"), "image/bmp"))), "invalid_image"
    )
    assert_image_error(post(live_server, vision_body("")), "invalid_image")


def test_image_size_limits(live_server, image_server):
    too_many_pixels = data_url(image_bytes(size=(1200, 1200)))  # small file, 1.44 Mpx > the 1 Mpx limit
    assert "pixels" in assert_image_error(post(live_server, vision_body(too_many_pixels)), "image_too_large")
    too_many_bytes = "data:image/png;base64," + base64.b64encode(b"\0" * (2 * 2**20)).decode()
    assert_image_error(post(live_server, vision_body(too_many_bytes)), "image_too_large")
    assert_image_error(post(live_server, vision_body(f"{image_server}/huge")), "image_too_large")


def test_too_many_images_and_image_to_text_model(live_server):
    image = data_url(image_bytes())
    assert "at most 2" in assert_image_error(post(live_server, vision_body(image, image, image)), "too_many_images")
    message = assert_image_error(post(live_server, vision_body(image, model=TEXT)), "model_not_multimodal")
    assert TEXT in message
    assert_image_error(post(live_server, vision_body(image, model=MOE)), "model_not_multimodal")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://100.64.0.1/x.png",
        "http://localhost/x.png",
    ],
)
def test_ssrf_guard_refuses_internal_addresses(live_server, url):
    assert "non-public" in assert_image_error(post(live_server, vision_body(url)), "image_url_refused")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "ftp://example.com/x.png"])
def test_non_http_urls_and_paths_are_refused(live_server, url):
    assert_image_error(post(live_server, vision_body(url)), "image_url_refused")


def test_redirects_to_forbidden_hosts_are_refused(live_server, image_server):
    assert "127.0.0.1" in assert_image_error(
        post(live_server, vision_body(f"{image_server}/to-loopback")), "image_url_refused"
    )
    assert "169.254.169.254" in assert_image_error(
        post(live_server, vision_body(f"{image_server}/to-metadata")), "image_url_refused"
    )
    assert "redirected" in assert_image_error(
        post(live_server, vision_body(f"{image_server}/loop")), "image_fetch_failed"
    )


def test_fetch_failures_and_timeouts(live_server, image_server):
    assert "404" in assert_image_error(post(live_server, vision_body(f"{image_server}/missing")), "image_fetch_failed")
    assert_image_error(post(live_server, vision_body(f"{image_server}/text")), "invalid_image")
    started = time.monotonic()
    assert_image_error(post(live_server, vision_body(f"{image_server}/slow")), "image_fetch_timeout")
    assert time.monotonic() - started < 4  # the catalog's 2 s fetch timeout, not the server's 4 s


def test_vision_metrics_observe_encoder_latency(live_server):
    post(live_server, vision_body(data_url(image_bytes())))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = live_server.http.get("/metrics").text
        if f'vision_encoder_latency_seconds_count{{base_model="{VISION}",model_name="{VISION}"}}' in text:
            return
        time.sleep(0.3)
    raise AssertionError("vision_encoder_latency_seconds was never observed")


def test_concurrent_mixed_traffic_across_all_three(async_client):
    image = data_url(image_bytes())

    async def one(i: int):
        if i % 3 == 0:
            return await async_client.chat.completions.create(
                model=TEXT, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=8
            )
        if i % 3 == 1:
            return await async_client.chat.completions.create(
                model=MOE, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=8
            )
        return await async_client.chat.completions.create(
            model=VISION,
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"Say {i}"},
                        {"type": "image_url", "image_url": {"url": image}},
                    ],
                }
            ],
        )

    async def run_all():  # 4 per model: tiny-phimoe admits 4 in flight (test catalog)
        return await asyncio.gather(*(one(i) for i in range(12)))

    results = asyncio.run(run_all())
    assert sorted(r.model for r in results) == sorted([TEXT, MOE, VISION] * 4)
    assert all(r.usage.completion_tokens >= 1 for r in results)
