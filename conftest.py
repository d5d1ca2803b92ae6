"""Shared pytest fixtures. Tests run against the real PostgreSQL and Redis that
`make test` starts (DATABASE_URL / REDIS_URL)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts import services
from accounts.tests.factories import UserFactory, token_for
from testsupport import db as test_db
from testsupport.simulator import running_simulator

ADMIN_PASSWORD = "admin-test-password-1"


# --- the database: created and migrated as the owner, every test as the application -----------
@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """pytest-django creates and migrates the test database as the tables' owner."""
    test_db.default_as_owner()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """Then every test connects as the application role (production privileges), and the
    flush between transactional tests runs as the owner (testsupport/db.py)."""
    test_db.default_as_application()
    with test_db.flush_as_owner():
        yield
    test_db.default_as_owner()  # pytest-django drops the test database as its owner


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory(username="julien", plan="pro", fullname="Julien")


@pytest.fixture
def write_token(user) -> str:
    return token_for(user, "write")


@pytest.fixture
def read_token(user) -> str:
    return token_for(user, "read")


@pytest.fixture
def staff_client(db) -> Client:
    """A browser session logged into the Django admin as a superuser."""
    services.user_create(name="root", is_staff=True, password=ADMIN_PASSWORD)
    client = Client()
    assert client.login(username="root", password=ADMIN_PASSWORD)
    return client


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory):
    """Base URL of a real provider simulator process, shared by the whole session."""
    with running_simulator(tmp_path_factory.mktemp("simulator") / "uvicorn.log") as url:
        yield url


# --- a real browser (testsupport/browser.py) ---------------------------------------------------
_call_failed = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Remembers whether a test's body failed (browser_page then takes a screenshot)."""
    report = yield
    if report.when == "call":
        item.stash[_call_failed] = report.failed
    return report


@pytest.fixture(scope="session")
def _chromium(tmp_path_factory):
    """Debian's Chromium, started once per session: its DevTools endpoint. If it cannot start,
    every test that needs it fails (never skips) with the reason."""
    from testsupport import browser

    try:
        with browser.running_chromium(tmp_path_factory.mktemp("chromium") / "profile") as url:
            yield url
    except browser.BrowserUnavailable as exc:
        pytest.fail(f"the browser tests need Chromium: {exc}", pytrace=False)


@pytest.fixture
def browser_page(_chromium, live_server, request, tmp_path, monkeypatch):
    """A fresh page (no cookies) in headless Chromium, for a test against `live_server`
    (transactional database). A failed test leaves `failure.png` in its tmp_path.

    Playwright's sync API registers its asyncio loop as running in this thread while the page
    is open, so Django takes the test's own database calls for calls from async code. They are
    not (the loop only carries Playwright's messages; the views run in the live server's
    threads, still checked): the check is off in this thread for this test only. Django also
    keeps this thread's connections apart while a loop runs; they are closed before the loop
    goes, else they would leak and keep the test database from being dropped."""
    from contextlib import ExitStack

    from django.db import connections

    from testsupport import browser

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with ExitStack() as stack:
        try:
            page = stack.enter_context(browser.fresh_page(_chromium))
        except browser.BrowserUnavailable as exc:
            pytest.fail(f"the browser tests need Chromium: {exc}", pytrace=False)
        stack.callback(connections.close_all)  # runs first, while the loop is still there
        yield page
        if request.node.stash.get(_call_failed, False):
            browser.screenshot(page, tmp_path / "failure.png")
