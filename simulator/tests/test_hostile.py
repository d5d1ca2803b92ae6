"""The hostile-provider switches (a redirect, compression bombs, a chat Content-Type) and the
request logs (`paths` in the stats, `/_sim/hits`) that show what a client really requested."""

from __future__ import annotations

import json
import socket
import zlib
from urllib.parse import urlsplit

import pytest

from simulator.bombs import MIB
from simulator.tests.conftest import Provider, sse_data


def raw_request(base_url: str, request_line: str) -> bytes:
    """Sends one request line as given (no client-side normalization); returns the answer."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_redirect_to_answers_the_redirect_before_authentication(provider: Provider):
    provider.set_faults(redirect_to="http://127.0.0.1:1/internal", redirect_status=307)

    response = provider.chat(headers={})

    assert response.status_code == 307
    assert response.headers["location"] == "http://127.0.0.1:1/internal"
    assert response.headers["inference-id"].startswith(f"sim-{provider.slug}-")


def test_redirect_status_defaults_to_302(provider: Provider):
    provider.set_faults(redirect_to="https://example.org/x")

    assert provider.chat().status_code == 302


@pytest.mark.parametrize(
    ("switches", "field"),
    [
        ({"redirect_to": "ftp://x"}, "redirect_to"),
        ({"redirect_to": "http://a b"}, "redirect_to"),
        ({"redirect_status": 200}, "redirect_status"),
        ({"bomb_mb": -1}, "bomb_mb"),
        ({"bomb_mb": 4097}, "bomb_mb"),
        ({"bomb_encoding": "br"}, "bomb_encoding"),
        ({"chat_content_type": ""}, "chat_content_type"),
        ({"chat_content_type": "text/html\n"}, "chat_content_type"),
    ],
)
def test_invalid_hostile_switches_are_refused_naming_them(provider: Provider, switches, field):
    response = provider.http.put(f"/{provider.slug}/_sim/faults", json=switches)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == field


def bomb(provider: Provider, *, stream: bool, encoding: str) -> tuple[dict, bytes]:
    """The answer's headers and its raw (still encoded) body."""
    with provider.http.stream(
        "POST",
        f"/{provider.slug}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        headers=provider.auth,
    ) as response:
        assert response.status_code == 200
        return dict(response.headers), b"".join(response.iter_raw())


@pytest.mark.parametrize(
    ("encoding", "header", "wbits"),
    [("gzip", "gzip", 16 + zlib.MAX_WBITS), ("deflate", "deflate", zlib.MAX_WBITS)],
)
def test_a_bomb_is_a_small_compressed_body_of_a_valid_huge_answer(
    provider: Provider, encoding, header, wbits
):
    provider.set_faults(bomb_mb=8, bomb_encoding=encoding)

    headers, raw = bomb(provider, stream=False, encoding=encoding)
    decoded = zlib.decompress(raw, wbits)

    assert headers["content-encoding"] == header
    assert headers["content-type"] == "application/json"
    assert headers["inference-id"].startswith(f"sim-{provider.slug}-")
    assert len(raw) < 32 * 1024
    assert len(decoded) == 8 * MIB
    body = json.loads(decoded)
    assert body["choices"][0]["message"]["content"] == "0" * len(
        body["choices"][0]["message"]["content"]
    )


def test_a_streamed_bomb_is_valid_sse_ending_with_done(provider: Provider):
    provider.set_faults(bomb_mb=4)

    headers, raw = bomb(provider, stream=True, encoding="gzip")
    decoded = zlib.decompress(raw, 16 + zlib.MAX_WBITS)

    assert headers["content-type"] == "text/event-stream"
    assert 4 * MIB - 100_000 < len(decoded) <= 4 * MIB
    events = sse_data(decoded.decode())
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_an_identity_bomb_is_sent_as_is_and_an_unsupported_one_is_labelled_br(
    provider: Provider,
):
    provider.set_faults(bomb_mb=2, bomb_encoding="identity")
    plain_headers, plain = bomb(provider, stream=False, encoding="identity")
    provider.set_faults(bomb_mb=2, bomb_encoding="unsupported")
    br_headers, labelled = bomb(provider, stream=False, encoding="unsupported")

    assert "content-encoding" not in plain_headers
    assert len(plain) == 2 * MIB
    assert br_headers["content-encoding"] == "br"
    assert len(zlib.decompress(labelled, 16 + zlib.MAX_WBITS)) == 2 * MIB


def test_chat_content_type_labels_whole_chat_answers(provider: Provider):
    provider.set_faults(chat_content_type="text/html; charset=utf-8")

    response = provider.chat()

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.json()["object"] == "chat.completion"


def test_stats_paths_count_the_providers_requests_but_not_its_controls(provider: Provider):
    provider.chat()
    provider.chat(route="/openai/v1/chat/completions")
    provider.chat()
    provider.http.post(f"/{provider.slug}/internal/admin?x=1")
    provider.set_faults()

    assert provider.stats()["paths"] == {
        "POST /v1/chat/completions": 2,
        "POST /openai/v1/chat/completions": 1,
        "POST /internal/admin?x=1": 1,
    }


def test_the_hit_log_keeps_raw_paths_across_resets_until_cleared(provider: Provider):
    http = provider.http
    assert http.delete("/_sim/hits").json() == {"hits": {}}
    raw_request(str(http.base_url), f"POST /{provider.slug}/a/..%2F_sim%2Freset%3Fx")
    http.post("/_sim/reset")

    hits = http.get("/_sim/hits").json()["hits"]

    assert hits == {  # the DELETE cleared the log, itself included; the GET sees itself
        f"POST /{provider.slug}/a/..%2F_sim%2Freset%3Fx": 1,
        "POST /_sim/reset": 1,
        "GET /_sim/hits": 1,
    }
    assert http.delete("/_sim/hits").json() == {"hits": {}}
    assert http.put("/_sim/hits").status_code == 405
