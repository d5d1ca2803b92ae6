"""A request body trickled one byte at a time (found by review, issue 12): the edge's
per-chunk timeout alone never fired for a byte sent just before it, so an anonymous client (Django
reads the body before authenticating) held a connection for as long as it liked;
HTTP_BODY_DEADLINE_S bounds the whole body."""

import socket
import time

import pytest

from testsupport.processes import WebServer

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.0
SLACK_S = 1.5


@pytest.fixture(scope="module")
def web(tmp_path_factory, django_db_setup, django_db_blocker):
    server = WebServer(
        tmp_path_factory.mktemp("trickle") / "web.log",
        HTTP_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_BODY_TIMEOUT_S=str(TIMEOUT_S),
        HTTP_BODY_DEADLINE_S=str(2 * TIMEOUT_S),
    ).start()
    yield server
    server.stop()


def test_a_body_trickled_one_byte_at_a_time_is_cut_within_a_bounded_time(web):
    host, port = web.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/settings/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        sock.settimeout(0.05)
        started = time.monotonic()
        answered_after_s = None
        while time.monotonic() - started < 4 * (TIMEOUT_S + SLACK_S):
            try:
                sock.sendall(b" ")  # one byte every half timeout: never idle for a timeout
                if sock.recv(1000) is not None:
                    answered_after_s = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            except OSError:
                answered_after_s = time.monotonic() - started
                break
            time.sleep(TIMEOUT_S / 2)
    assert answered_after_s is not None, "the trickled body kept the connection open"
    assert answered_after_s < 2 * TIMEOUT_S + SLACK_S
