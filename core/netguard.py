"""Which network addresses the platform may send requests to on a provider's behalf.

A provider's URLs (its API base, its cost endpoint) are typed by a partner or an admin; a
hostile one pointing at loopback, link-local (cloud metadata at 169.254.169.254) or a private
range would make our router or worker request internal services with the platform's key. Such
addresses are refused unless a network is listed in `UPSTREAM_ALLOWED_NETWORKS` (the
simulator in `make run` and the tests is on 127.0.0.1, allowed that way).

Checked twice: when a URL is saved (`url_refusal`, a clear 400) and when it is connected to
(`address_refused`, on every resolved address, so a DNS name that later resolves to a private
address is refused too).
"""

from __future__ import annotations

import ipaddress
import socket
from functools import cache
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@cache
def _allowed(
    networks: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def allowed_networks():
    return _allowed(tuple(settings.UPSTREAM_ALLOWED_NETWORKS))


def is_internal(ip: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified (not the internet)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def address_refused(address: str | IPAddress) -> bool:
    """Is this resolved address off limits for upstream requests?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return True
    if not is_internal(ip):
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return not any(ip in net or (mapped is not None and mapped in net)
                   for net in allowed_networks())  # fmt: skip


def url_refusal(url: str, *, resolve: bool = True, unresolvable_ok: bool = False) -> str | None:
    """Why `url` may not be used as a provider URL, or None. Needs http(s), a host, no
    credentials; the host (and, with `resolve`, every address it resolves to) must not be
    internal unless allowed. A host that does not resolve is a refusal, or with
    `unresolvable_ok` none (left to fail on its own when connected to; every connection checks
    its addresses again)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    host = parts.hostname
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials"
    if not host.isascii():  # clients NFKC/IDNA-map it: bold digits become 127.0.0.1
        return "has a host that is not ASCII (write an international name in its xn-- form)"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    elif not resolve:
        return None
    else:
        try:
            infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None if unresolvable_ok else f"has a host ({host}) that does not resolve"
        addresses = [info[4][0] for info in infos]
    for address in addresses:
        if address_refused(address):
            return (
                f"points to an internal address ({address}); add its network to "
                "UPSTREAM_ALLOWED_NETWORKS to allow it"
            )
    return None


class ResponseTooLarge(Exception):
    """A provider's answer is larger than the caller's cap."""

    def __init__(self, limit_bytes: int):
        super().__init__(f"answer larger than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


def response_read_capped(response, limit_bytes: int) -> bytes:
    """The body of a streamed httpx response, read no further than `limit_bytes` (counted as
    decoded); raises ResponseTooLarge beyond it. For what the worker fetches from providers
    (cost answers, `/v1/models`): an answer must not grow without bound in memory."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit_bytes:
            raise ResponseTooLarge(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
