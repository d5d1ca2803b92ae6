#!/usr/bin/env bash
# Prepare a fresh machine for `make run` / `make test`: a virtual environment with the exact
# pins of pyproject.toml in .venv, plus the system packages the project starts itself
# (redis-server; the PostgreSQL 15 server binaries are expected, and installed if missing) and
# Debian's Chromium, the browser the admin's browser tests drive with Playwright.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: '$*' is missing and only root can install it with apt-get" >&2
        exit 1
    fi
    echo "bootstrap: installing $* with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql-15
fi
# The browser tests launch this binary (testsupport/browser.py); `playwright install` is never
# run: Playwright's own browser downloads are not used.
[ -x /usr/bin/chromium ] || apt_install chromium

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($PYTHON --version)" >&2
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the pins change.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing pinned dependencies into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# The JavaScript client the router tests drive (@huggingface/inference, exact pin in
# tests/js/package.json), when Node.js is present. No lock file: it would record registry URLs.
if command -v npm >/dev/null 2>&1; then
    js_stamp="tests/js/node_modules/.installed-$(sha256sum tests/js/package.json | cut -c1-16)"
    if [ ! -f "$js_stamp" ]; then
        echo "bootstrap: installing the JavaScript test client into tests/js/node_modules" >&2
        # Only the tests need it: a failure here must not stop `make run`.
        if npm install --prefix tests/js --no-package-lock --no-audit --no-fund --silent; then
            rm -f tests/js/node_modules/.installed-*
            touch "$js_stamp"
        else
            echo "bootstrap: npm install failed; router/tests/test_js_client.py will fail" >&2
        fi
    fi
fi
