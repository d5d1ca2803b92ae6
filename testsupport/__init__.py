"""Helpers shared by the test suites of every app, of `tests/` and of `simulator/tests`.

Not a Django app and not shipped: imported by tests (and bench/) only. Modules:
`net` (stdlib only: `free_port`), `simulator` (a real simulator process; no Django),
`processes` (manage.py, Celery and web processes on the test database; threads; polling),
`admin_forms` (the POST data of a rendered admin form) and `browser` (headless Chromium
driven by Playwright, for tests of browser-facing pages).
"""
