"""`python -m simulator`: serve the provider simulator with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Provider simulator: http://HOST:PORT/<provider slug>/v1/chat/completions, "
        "/v1/models, /costs and /_sim/ controls (see docs/simulator.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (off by default)"
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        "simulator.app:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        # Requests hung by the `timeout` switch must not hold a shutdown for 120 s.
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
