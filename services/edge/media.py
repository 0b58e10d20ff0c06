"""Image inputs, safe by default. Runs at the edge, before any engine sees the request, so
engines never fetch a URL themselves: every image reaches vLLM as a checked data URL.

- data URLs: png, jpeg, webp, gif (first frame) only, with byte and pixel limits;
- http(s) URLs: fetched with a timeout and a byte limit; redirects followed by hand (a few at
  most), every hop re-checked; hosts must resolve only to globally routable addresses (no
  loopback, private, link-local / cloud metadata, CGNAT, multicast or reserved ranges) unless an
  allow-list permits them;
- anything else (file:, ftp:, paths) is refused.
The fetch connects to the very address the guard approved (the `Host` header and the TLS server
name stay the URL's host), so a DNS answer that changes between the check and the connection
(rebinding) cannot steer the fetch to an internal address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from services.core.catalog import MediaPolicy
from services.core.errors import Code

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


class MediaError(Exception):
    """A client error about an image: rendered as a 400 with `code`."""

    def __init__(self, message: str, code: Code) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MediaOutcome:
    images: int
    seconds: float


def _decode_image(data: bytes, policy: MediaPolicy) -> str:
    """Check an encoded image and return it as a data URL (GIFs become their first frame, PNG)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > policy.max_image_bytes:
        raise MediaError(f"image is {len(data)} bytes; the limit is {policy.max_image_bytes}", Code.IMAGE_TOO_LARGE)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: the size is known before decoding
            kind = image.format
            if kind not in ALLOWED_FORMATS:
                raise MediaError(
                    f"image format {kind or 'unknown'} is not supported (png, jpeg, webp, gif)", Code.INVALID_IMAGE
                )
            width, height = image.size
            if width * height > policy.max_image_pixels:
                raise MediaError(
                    f"image is {width}x{height} pixels; the limit is {policy.max_image_pixels} pixels",
                    Code.IMAGE_TOO_LARGE,
                )
            image.load()  # decode fully: truncated or corrupt data fails here, not in the engine
            if kind == "GIF":
                out = io.BytesIO()
                image.seek(0)
                image.convert("RGB").save(out, format="PNG")
                data, kind = out.getvalue(), "PNG"
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise MediaError(f"image could not be decoded: {error}", Code.INVALID_IMAGE) from None
    return f"data:{ALLOWED_FORMATS[kind]};base64,{base64.b64encode(data).decode()}"


def _data_url_bytes(url: str, policy: MediaPolicy) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise MediaError("image data URLs must be base64-encoded", Code.INVALID_IMAGE)
    if len(payload) > policy.max_image_bytes * 4 // 3 + 4:
        raise MediaError(f"image is larger than the limit of {policy.max_image_bytes} bytes", Code.IMAGE_TOO_LARGE)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("image data URL is not valid base64", Code.INVALID_IMAGE) from None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%")[0] for info in infos]


class URLGuard:
    """Decides whether a URL may be fetched: scheme, host allow-list, and every resolved address."""

    def __init__(self, policy: MediaPolicy, resolve: Resolver = system_resolver) -> None:
        self.allow_hosts = {host.lower() for host in policy.allow_hosts}
        self.allow_networks = [ipaddress.ip_network(cidr, strict=False) for cidr in policy.allow_networks]
        self.resolve = resolve

    def _address_allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allow_networks):
            return True
        return address.is_global and not address.is_multicast

    async def check(self, url: str) -> IPAddress | None:
        """Raises MediaError, or returns the address to connect to: the approved one for a host
        name, None where the URL may be fetched as it is (an address literal, an allow-listed host)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise MediaError(
                f"image URL scheme {parts.scheme or '(none)'!r} is refused; use data:, http or https",
                Code.IMAGE_URL_REFUSED,
            )
        host = (parts.hostname or "").lower()
        if not host:
            raise MediaError("image URL has no host", Code.IMAGE_URL_REFUSED)
        if host in self.allow_hosts:
            return None
        literal = True
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            literal = False
            try:
                answers = await self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
            except (OSError, UnicodeError):
                raise MediaError(f"image URL host {host!r} does not resolve", Code.IMAGE_FETCH_FAILED) from None
            addresses = [ipaddress.ip_address(answer) for answer in answers]
        if not addresses:
            raise MediaError(f"image URL host {host!r} does not resolve", Code.IMAGE_FETCH_FAILED)
        refused = sorted({str(a) for a in addresses if not self._address_allowed(a)})
        if refused:
            raise MediaError(
                f"image URL host {host!r} resolves to a non-public address ({', '.join(refused)}); refused",
                Code.IMAGE_URL_REFUSED,
            )
        return None if literal else addresses[0]


def pinned(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` with its host replaced by `address`, plus the Host header and TLS server name that keep
    the request what it was for the server and for certificate checks."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return (urlunsplit(parts._replace(netloc=netloc)), {"Host": host_header}, {"sni_hostname": str(parts.hostname)})


class MediaFetcher:
    def __init__(self, policy: MediaPolicy, resolve: Resolver = system_resolver) -> None:
        self.policy = policy
        self.guard = URLGuard(policy, resolve)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.policy.fetch_timeout_s),
                headers={"User-Agent": "slmserve-media-fetcher"},
            )
        return self._client

    async def fetch(self, url: str) -> bytes:
        try:
            return await asyncio.wait_for(self._fetch(url), self.policy.fetch_timeout_s)
        except TimeoutError:
            raise MediaError(
                f"fetching the image timed out after {self.policy.fetch_timeout_s:g}s", Code.IMAGE_FETCH_TIMEOUT
            ) from None

    async def _fetch(self, url: str) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            address = await self.guard.check(url)
            target, headers, extensions = pinned(url, address) if address is not None else (url, {}, {})
            try:
                async with self._http().stream("GET", target, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise MediaError(
                            f"fetching the image failed: HTTP {response.status_code}", Code.IMAGE_FETCH_FAILED
                        )
                    return await self._read_limited(response)
            except httpx.TimeoutException:
                raise MediaError(
                    f"fetching the image timed out after {self.policy.fetch_timeout_s:g}s", Code.IMAGE_FETCH_TIMEOUT
                ) from None
            except httpx.HTTPError as error:
                failed = f"fetching the image failed: {type(error).__name__}"
                raise MediaError(failed, Code.IMAGE_FETCH_FAILED) from None
        raise MediaError(f"image URL redirected more than {self.policy.max_redirects} times", Code.IMAGE_FETCH_FAILED)

    async def _read_limited(self, response: httpx.Response) -> bytes:
        limit = self.policy.max_image_bytes
        if int(response.headers.get("content-length") or 0) > limit:
            raise MediaError(f"image is larger than the limit of {limit} bytes", Code.IMAGE_TOO_LARGE)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise MediaError(f"image is larger than the limit of {limit} bytes", Code.IMAGE_TOO_LARGE)
            chunks.append(chunk)
        return b"".join(chunks)

    async def load(self, url: str) -> str:
        """Any accepted image reference -> a checked data URL."""
        if url.startswith("data:"):
            data = _data_url_bytes(url, self.policy)
        else:
            data = await self.fetch(url)
        return await asyncio.to_thread(_decode_image, data, self.policy)


def _image_parts(messages: Any) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if not isinstance(messages, list):
        return parts
    for message in messages:
        if isinstance(message, list):  # a conversation of a batch (/v1/chat/completions/batch)
            parts.extend(_image_parts(message))
            continue
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts.extend(p for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return parts


def _part_url(part: dict[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise MediaError("image_url.url must be a non-empty string", Code.INVALID_IMAGE)
    return url


async def prepare_images(
    body: dict[str, Any], *, model: str, accepts_images: bool, max_images: int, fetcher: MediaFetcher
) -> MediaOutcome | None:
    """Check and inline every image of a request's messages in place (chat, a batch's conversations,
    a chat tokenize request), so that no engine fetches a URL itself; None when it has none."""
    parts = _image_parts(body.get("messages"))
    if not parts:
        return None
    if not accepts_images:
        raise MediaError(
            f"model `{model}` does not accept images; send text only or pick a vision model", Code.MODEL_NOT_MULTIMODAL
        )
    if len(parts) > max_images:
        raise MediaError(
            f"{len(parts)} images sent; model `{model}` accepts at most {max_images} per request", Code.TOO_MANY_IMAGES
        )
    started = time.perf_counter()
    urls = await asyncio.gather(*(fetcher.load(_part_url(part)) for part in parts))
    for part, url in zip(parts, urls, strict=True):
        part["image_url"] = {"url": url}
    return MediaOutcome(len(parts), time.perf_counter() - started)
