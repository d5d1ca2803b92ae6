"""scripts/partner_sync.py waits out the partner write API's rate limit (a 429 with
Retry-After) instead of stopping half-way through a sync."""

import importlib.util

import httpx

from testsupport.processes import REPO_ROOT

spec = importlib.util.spec_from_file_location("partner_sync", REPO_ROOT / "scripts/partner_sync.py")
partner_sync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(partner_sync)


def test_a_429_is_retried_after_the_wait_it_names(monkeypatch):
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"Retry-After": "bogus"}),
        httpx.Response(201, json={"_id": "x"}),
    ]
    slept = []
    monkeypatch.setattr(partner_sync.time, "sleep", slept.append)
    transport = partner_sync.RateLimitRetry(httpx.MockTransport(lambda request: answers.pop(0)))
    with httpx.Client(base_url="http://partner.test", transport=transport) as client:
        response = client.post("/api/partners/together/models", json={})
    assert response.status_code == 201
    assert slept == [7.0, 1.0]


def test_it_gives_up_after_a_few_retries(monkeypatch):
    calls = []

    def always_limited(request):
        calls.append(request)
        return httpx.Response(429, headers={"Retry-After": "100000"})

    slept = []
    monkeypatch.setattr(partner_sync.time, "sleep", slept.append)
    transport = partner_sync.RateLimitRetry(httpx.MockTransport(always_limited))
    with httpx.Client(base_url="http://partner.test", transport=transport) as client:
        response = client.post("/api/partners/together/models", json={})
    assert response.status_code == 429
    assert len(calls) == partner_sync.RETRIES_MAX + 1
    assert slept == [partner_sync.RETRY_AFTER_MAX_S] * partner_sync.RETRIES_MAX
