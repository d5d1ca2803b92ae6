"""Issue 12's acceptance for hostile answers, end to end: a real web process (uvicorn +
config.asgi, default settings) relays a provider's 300 MiB-decompressed gzip bomb (about 300 KiB
on the wire, from the simulator's `bomb_mb`), as a whole answer and as a stream. The client gets
a 502 or a stream ended cleanly with an error event, and the process's peak memory (VmHWM) stays
under 300 MB: the router decodes in bounded steps and caps what it relays
(ROUTER_MAX_RESPONSE_BYTES, ROUTER_MAX_STREAM_BYTES)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from accounts.tests.factories import UserFactory, token_for
from registry.tests.factories import HubModelFactory, MappingFactory
from testsupport.processes import WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024
BOMB_MB = 300
PEAK_LIMIT_MB = 300
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def router(tmp_path, transactional_db):
    server = WebServer(tmp_path / "uvicorn.log").start()
    yield server
    server.stop()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_300_mb_gzip_bomb_is_relayed_within_300_mb(router, provider):
    httpx.put(f"{provider.base_url}/_sim/faults", json={"bomb_mb": BOMB_MB}, timeout=10)
    MappingFactory(provider=provider, hub_model=HubModelFactory(model_id=f"bomb/{provider.slug}"),
                   provider_model="bomb-model", status="live")  # fmt: skip
    token = token_for(UserFactory(username="bomb-target", plan="pro"), "write")
    url = f"{router.url}/{provider.slug}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "bomb-model", "messages": MESSAGES}
    before_mb = peak_rss_mb(router.proc.pid)
    with httpx.stream("POST", f"{provider.base_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {provider.api_key}"},
                      timeout=60) as direct:  # fmt: skip
        on_the_wire = sum(len(c) for c in direct.iter_raw())

    whole = httpx.post(url, json=body, headers=headers, timeout=120)
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers,
                      timeout=120) as streamed:  # fmt: skip
        relayed = 0
        last = b""
        for chunk in streamed.iter_raw():
            relayed += len(chunk)
            last = (last + chunk)[-4096:]
    peak_mb = peak_rss_mb(router.proc.pid)

    assert on_the_wire < 1 * MIB  # a few hundred KiB for 300 MiB decoded
    assert whole.status_code == 502, whole.text[:300]
    assert whole.json()["error"]["code"] == "upstream_response_too_large"
    assert streamed.status_code == 200
    assert relayed <= 64 * MIB + 4096  # ROUTER_MAX_STREAM_BYTES (default), then the error
    final = last.decode().rstrip("\n").rsplit("\n\n", 1)[-1]
    assert json.loads(final.removeprefix("data: "))["error"]["code"] == (
        "upstream_response_too_large"
    )
    assert peak_mb < PEAK_LIMIT_MB, (
        f"the web process peaked at {peak_mb:.0f} MB (before: {before_mb:.0f} MB)"
    )
    assert router.proc.poll() is None  # still serving
    assert httpx.get(f"{router.url}/api/health", timeout=10).status_code == 200
