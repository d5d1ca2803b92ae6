"""core.netguard: provider URLs may not point into internal networks unless allowed."""

import pytest
from django.test import override_settings

from core.netguard import address_refused, url_refusal

INTERNAL = [
    "127.0.0.1",
    "127.5.6.7",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # noqa: S104 (an address to refuse, not a bind)
    "::1",
    "fe80::1",
    "fc00::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "224.0.0.1",
    "not-an-address",
]


@pytest.mark.parametrize("address", INTERNAL)
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_internal_addresses_are_refused(address):
    assert address_refused(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_internet_addresses_are_allowed(address):
    assert not address_refused(address)


@override_settings(UPSTREAM_ALLOWED_NETWORKS=["127.0.0.0/8"])
def test_an_allowed_network_is_allowed_and_only_it():
    assert not address_refused("127.0.0.1")
    assert not address_refused("::ffff:127.0.0.1")
    assert address_refused("10.0.0.1")
    assert address_refused("169.254.169.254")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "http"),
        ("file:///etc/passwd", "http"),
        ("http:///v1", "no host"),
        ("http://user:pw@8.8.8.8/", "credentials"),
        ("http://127.0.0.1:8080/", "internal address (127.0.0.1)"),
        ("http://[::1]/", "internal address (::1)"),
        ("http://169.254.169.254/latest/meta-data", "internal address"),
        ("http://localhost:1/", "internal address"),  # a name resolving to loopback
        ("http://[::1/", "not a valid URL"),
        ("http://host.invalid/", "does not resolve"),
        # Mathematical and segmented digits: HTTP clients map them to 127.0.0.1 (found by
        # review); refused before any lookup.
        ("http://\U0001d7cf\U0001d7d0\U0001d7d5.\U0001d7ce.\U0001d7ce.\U0001d7cf/", "not ASCII"),
        ("http://\U0001fbf1\U0001fbf2\U0001fbf7.\U0001fbf0.\U0001fbf0.\U0001fbf1/", "not ASCII"),
    ],
)
@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_url_refusal_names_the_reason(url, reason):
    refusal = url_refusal(url)
    assert refusal is not None
    assert reason in refusal


@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_public_literal_urls_pass():
    assert url_refusal("https://8.8.8.8/v1") is None
    assert url_refusal("https://example.invalid/", resolve=False) is None


@override_settings(UPSTREAM_ALLOWED_NETWORKS=["127.0.0.0/8", "::1/128"])
def test_loopback_passes_when_allowed():
    assert url_refusal("http://127.0.0.1:9/") is None
    assert url_refusal("http://localhost:9/") is None


@override_settings(UPSTREAM_ALLOWED_NETWORKS=[])
def test_an_unresolvable_host_may_be_left_to_fail_when_connected_to():
    """The cost poll and provider saves: a host that does not resolve is not a refusal (it fails
    on its own, and every connection checks its addresses); one that resolves inside still is."""
    assert url_refusal("http://host.invalid/", unresolvable_ok=True) is None
    assert "internal address" in url_refusal("http://localhost:1/", unresolvable_ok=True)
    assert "internal address" in url_refusal("http://127.0.0.1/", unresolvable_ok=True)
