"""The SSRF guard and image decoding on their own (the live tests cover them through the router)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import threading

import pytest
from PIL import Image

from services.edge.media import MediaError, MediaFetcher, MediaPolicy, URLGuard, _data_url_bytes, _decode_image


def check(url: str, **policy) -> None:
    asyncio.run(URLGuard(MediaPolicy(**policy)).check(url))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.8.9.10/",
        "http://0.0.0.0/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.1]/",
        "http://localhost/",
    ],
)
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


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Serves a PNG at /cat.png and a redirect back to the same host at /hop; records each request."""

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers["Host"]))
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
            return
        body = _png()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _servers_on_one_port(*hosts: str):
    """One server per loopback address, all on the same port (so that only the address differs)."""
    for _ in range(20):
        servers = []
        try:
            for host in hosts:
                server = http.server.ThreadingHTTPServer((host, servers[0].server_port if servers else 0), _Recorder)
                server.requests = []
                servers.append(server)
            break
        except OSError:  # that port was taken on another address; try another
            for server in servers:
                server.server_close()
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _rebinding_resolver(first: str, then: str, calls: list[str]):
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return [first if len(calls) == 1 else then]

    return resolve


def test_a_rebinding_host_is_fetched_from_the_address_that_was_checked():
    """Issue 16 item 5: the host resolves to an allowed address for the check and to loopback after
    it; the fetch must connect to the checked address (the Host header unchanged), never loopback."""
    with _servers_on_one_port("127.0.0.2", "127.0.0.1") as (allowed, internal):
        calls: list[str] = []
        fetcher = MediaFetcher(
            MediaPolicy(allow_networks=["127.0.0.2/32"]), resolve=_rebinding_resolver("127.0.0.2", "127.0.0.1", calls)
        )
        port = allowed.server_port
        data = asyncio.run(fetcher.fetch(f"http://rebind.test:{port}/cat.png"))
    assert data == _png()
    assert allowed.requests == [("/cat.png", f"rebind.test:{port}")]
    assert internal.requests == [] and calls == ["rebind.test"]


def test_every_redirect_hop_is_resolved_and_checked_again():
    with _servers_on_one_port("127.0.0.2", "127.0.0.1") as (allowed, internal):
        calls: list[str] = []
        fetcher = MediaFetcher(
            MediaPolicy(allow_networks=["127.0.0.2/32"]), resolve=_rebinding_resolver("127.0.0.2", "127.0.0.1", calls)
        )
        with pytest.raises(MediaError) as raised:
            asyncio.run(fetcher.fetch(f"http://rebind.test:{allowed.server_port}/hop"))
    assert raised.value.code == "image_url_refused" and "127.0.0.1" in str(raised.value)
    assert [path for path, _ in allowed.requests] == ["/hop"] and internal.requests == []
    assert calls == ["rebind.test", "rebind.test"]
