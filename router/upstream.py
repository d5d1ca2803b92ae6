"""What the router accepts from providers: which addresses it connects to, and how much it
reads.

- Addresses: the aiohttp session resolves provider hosts through `GuardedResolver`, which drops
  every address `core.netguard.address_refused` refuses (loopback, private, link-local...
  unless listed in UPSTREAM_ALLOWED_NETWORKS); a host left without addresses is refused.
  aiohttp does not resolve IP literals, so `literal_refusal` checks those before connecting.
  The checks happen when connecting, so a name that starts resolving to an internal address
  after the provider was saved is refused too.
- Sizes: aiohttp's own decompression is off (it inflates a whole network chunk at once, about
  1000x its size). `BodyDecoder` decodes `Content-Encoding` gzip and deflate itself, in steps
  of at most `STEP` bytes, and counts the decoded bytes (and the bytes received) against a cap;
  any other encoding is refused.
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from django.conf import settings

from core.netguard import ResponseTooLarge, address_refused


class UpstreamRefused(OSError):
    """A provider host that resolves only to addresses the platform may not connect to."""

    def __init__(self, host: str, addresses: list[str]):
        listed = ", ".join(addresses[:4]) or "none"
        what = (
            f"{host} is an internal address"
            if addresses == [host]
            else f"{host} resolves to internal addresses only ({listed})"
        )
        super().__init__(f"{what}; add its network to UPSTREAM_ALLOWED_NETWORKS to allow it")


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, without the addresses the platform may not connect to."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not address_refused(r["host"])]
        if not allowed:
            raise UpstreamRefused(host, [r["host"] for r in results])
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@lru_cache(maxsize=4096)
def _literal_host(base_url: str) -> str | None:
    """The host of `base_url` if it is an IP literal (which aiohttp connects to unresolved)."""
    host = urlsplit(base_url).hostname or ""
    if not host.isascii():  # aiohttp maps it (NFKC, IDNA), possibly into an IP literal: refused
        return host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _literal_refused(host: str, networks: tuple[str, ...]) -> bool:
    return address_refused(host)  # `networks`: the setting it reads, part of the cache key


def literal_refusal(base_url: str) -> UpstreamRefused | None:
    """The refusal of a provider URL whose host is a refused IP literal, else None."""
    host = _literal_host(base_url)
    if host is not None and _literal_refused(host, tuple(settings.UPSTREAM_ALLOWED_NETWORKS)):
        return UpstreamRefused(host, [host])
    return None


def refusal_in(exc: BaseException) -> UpstreamRefused | None:
    """The `UpstreamRefused` behind an aiohttp connection error, if that was the cause."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, UpstreamRefused):
            return exc
        exc = getattr(exc, "os_error", None) or exc.__cause__
        seen += 1
    return None


# --- sizes (ResponseTooLarge: core.netguard, shared with the worker's capped reads) ----------
class BadEncoding(Exception):
    """A Content-Encoding the router does not decode, or data that does not decode."""


class BodyDecoder:
    """Decodes a body sent with `Content-Encoding: encoding` chunk by chunk, yielding pieces of
    at most STEP bytes, and raises ResponseTooLarge as soon as more than `cap` bytes have been
    decoded (or received). Memory: one piece at a time, whatever the compression ratio."""

    STEP = 256 * 1024
    _GZIP = 16 + zlib.MAX_WBITS

    def __init__(self, encoding: str, *, cap: int):
        name = encoding.strip().lower()
        if name not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise BadEncoding(f"Content-Encoding {encoding[:40]!r} is not supported")
        self._name = name
        self._inflater = zlib.decompressobj(self._GZIP) if name in ("gzip", "x-gzip") else None
        self._head = b""  # deflate: the first bytes, until they say zlib-wrapped or raw
        self.cap = cap
        self.received = 0
        self.decoded = 0

    @property
    def identity(self) -> bool:
        return self._name in ("", "identity")

    def _count(self, size: int) -> None:
        self.decoded += size
        if self.decoded > self.cap:
            raise ResponseTooLarge(self.cap)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.received += len(data)
        if self.received > self.cap:
            raise ResponseTooLarge(self.cap)
        if self._name == "deflate" and self._inflater is None:
            # RFC 9110's deflate is zlib-wrapped (a 2-byte header whose value is a multiple of
            # 31, method 8); some servers send raw deflate.
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            zlib_wrapped = data[0] & 0x0F == 8 and int.from_bytes(data[:2], "big") % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -15)
        if self._inflater is None:
            self._count(len(data))
            if data:
                yield data
            return
        while True:
            try:
                piece = self._inflater.decompress(data, self.STEP)
            except zlib.error as exc:
                raise BadEncoding(f"the body does not decode ({exc})") from exc
            data = self._inflater.unconsumed_tail
            if piece:
                self._count(len(piece))
                yield piece
            if not data and len(piece) < self.STEP:
                return
