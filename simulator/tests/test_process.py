"""The simulator as a program: no Django, `python -m simulator`, unknown paths and methods."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import pytest

from simulator.tests.conftest import Provider
from testsupport.net import free_port
from testsupport.simulator import (
    REPO_ROOT,
    environment_without_django,
    start_process,
    stop,
    wait_until_up,
)


def test_the_simulator_imports_and_builds_its_app_without_django():
    code = (
        "import sys, simulator.app, simulator.__main__\n"
        "assert callable(simulator.app.app)\n"
        "loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "assert not loaded, loaded\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment_without_django(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_python_m_simulator_serves_on_the_port_it_is_given(tmp_path):
    port = free_port()
    log = tmp_path / "simulator.log"
    proc = start_process([sys.executable, "-m", "simulator", "--port", str(port)], log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc, log)
        response = httpx.post(
            f"{url}/together/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sim-together-key"},
        )
        assert response.status_code == 200
        assert response.headers["Inference-Id"].startswith("sim-together-")
    finally:
        stop(proc)
    # uvicorn re-raises SIGTERM after a clean shutdown
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/together",
        "/together/v2/chat/completions",
        "/together/v1/completions",
        "/together/_sim/nothing",
        "/_sim/nothing",
        "/_sim",
        "/bad%20slug/v1/models",
        "/-dash/v1/models",
    ],
)
def test_unknown_paths_answer_404_json(http: httpx.Client, path: str):
    response = http.get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "route", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("POST", "/v1/models", "GET"),
        ("GET", "/costs", "POST"),
        ("DELETE", "/_sim/faults", "GET, PUT"),
        ("GET", "/_sim/reset", "POST"),
    ],
)
def test_a_wrong_method_answers_405_json_with_the_allowed_methods(
    provider: Provider, method: str, route: str, allowed: str
):
    response = provider.http.request(method, f"/{provider.slug}{route}")

    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["message"].startswith("method not allowed")


def test_a_trailing_slash_is_tolerated(provider: Provider):
    assert provider.http.get(f"/{provider.slug}/v1/models/").status_code == 200


def test_a_request_body_over_8_mib_is_refused_with_413(provider: Provider):
    response = provider.costs(body={"requestIds": ["x" * (9 * 1024 * 1024)]})

    assert response.status_code == 413


def test_the_health_endpoint_answers_ok(http: httpx.Client):
    assert http.get("/_sim/health").json() == {"status": "ok"}
