"""Fixtures: one real simulator process for the whole session, driven over HTTP.

The simulator runs as `python -m uvicorn simulator.app:app` on a free loopback port, without
Django settings in its environment. Each test gets its own provider slug, so tests never see
each other's switches or counters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from testsupport.simulator import running_simulator


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real simulator process (uvicorn), killed at the end of the session."""
    with running_simulator(tmp_path_factory.mktemp("simulator") / "uvicorn.log") as url:
        yield url


@pytest.fixture(scope="session")
def http(simulator_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator_url, timeout=10) as client:
        yield client


@dataclass
class Provider:
    """One simulated provider (a fresh slug) and shortcuts to its endpoints."""

    http: httpx.Client
    slug: str

    @property
    def key(self) -> str:
        return f"sim-{self.slug}-key"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def chat(
        self,
        body: dict[str, Any] | None = None,
        *,
        route: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> httpx.Response:
        """POSTs a chat completion; `fields` go into the default body."""
        if body is None:
            body = {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                **fields,
            }
        return self.http.post(
            f"/{self.slug}{route}",
            json=body,
            headers=self.auth if headers is None else headers,
            timeout=timeout or self.http.timeout,
        )

    def costs(
        self,
        ids: list[str] | None = None,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        content = json.dumps({"requestIds": ids} if body is None else body)
        return self.http.post(
            f"/{self.slug}/costs",
            content=content,
            headers={"Content-Type": "application/json", **(headers or self.auth)},
            timeout=timeout or self.http.timeout,
        )

    def models(self, timeout: float | None = None) -> httpx.Response:
        return self.http.get(f"/{self.slug}/v1/models", timeout=timeout or self.http.timeout)

    def set_faults(self, **switches: Any) -> None:
        response = self.http.put(f"/{self.slug}/_sim/faults", json=switches)
        assert response.status_code == 200, response.text

    def reset_faults(self) -> None:
        self.set_faults()

    def stats(self) -> dict[str, int]:
        return self.http.get(f"/{self.slug}/_sim/stats").json()

    def fabricated_ids(self, count: int) -> list[str]:
        """IDs of this provider that the chat endpoint never issued."""
        return [f"sim-{self.slug}-{n:024x}" for n in range(count)]


@pytest.fixture
def provider(http: httpx.Client) -> Provider:
    return Provider(http, f"p{uuid.uuid4().hex[:12]}")


@pytest.fixture
def other_provider(http: httpx.Client) -> Provider:
    return Provider(http, f"q{uuid.uuid4().hex[:12]}")


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = [event for event in text.split("\n\n") if event.strip()]
    payloads = []
    for event in events:
        assert event.startswith("data: "), f"not an SSE data event: {event!r}"
        payloads.append(event[len("data: ") :])
    return payloads
