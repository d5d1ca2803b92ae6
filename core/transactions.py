"""Transaction contracts, stated in code rather than in prose.

Two kinds of write functions:

- **Entry points** (a task, a command, a view or a test calls them; e.g.
  `billing.services.cost_batch_apply`) are decorated with `@transaction.atomic(durable=True)`:
  they open the outermost transaction themselves, so a return means committed, and calling
  one inside another transaction is an error (`RuntimeError`) instead of a silent widening
  of someone else's transaction. Django's own `TestCase` transactions (which pytest-django's
  `db` fixture uses) are exempt from the durability check (Django docs, "durable" in
  `transaction.atomic`), so plain `db` tests call them as production does; no test-only
  setting or wrapper is needed. Entry points that a caller may legitimately group
  (the admin posts several payers all-or-nothing) use plain `@transaction.atomic` and say so.

- **Building blocks** (lock these accounts, write these postings) are only correct inside a
  transaction their caller holds (the locks must outlive the statement). They are decorated
  with `@requires_atomic`, which refuses to run outside one instead of quietly opening a
  transaction of their own.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.transaction import TransactionManagementError

logger = logging.getLogger(__name__)

# PostgreSQL's "try again" errors: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
RETRY_ATTEMPTS = 4

P = ParamSpec("P")
R = TypeVar("R")


def requires_atomic(func: Callable[P, R]) -> Callable[P, R]:
    """Refuses to call `func` unless the default connection is inside `transaction.atomic`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not connections[DEFAULT_DB_ALIAS].in_atomic_block:
            raise TransactionManagementError(
                f"{func.__module__}.{func.__qualname__} must run inside a transaction "
                "(call it within transaction.atomic())."
            )
        return func(*args, **kwargs)

    return wrapper


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back, rerun it."""
    cause = exc.__cause__ if isinstance(exc, OperationalError) else None
    return getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES


def retry_on_conflict(func: Callable[P, R]) -> Callable[P, R]:
    """Reruns a durable entry point (put it above `@transaction.atomic(durable=True)`) when
    PostgreSQL aborted its transaction with a deadlock or a serialization failure, up to
    `RETRY_ATTEMPTS` times with a short growing pause. Safe because the whole transaction
    was rolled back and every posting is idempotent. Inside a caller's transaction (tests'
    `TestCase`) it cannot rerun anything, so it re-raises."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                in_outer = connections[DEFAULT_DB_ALIAS].in_atomic_block
                if not is_retryable(exc) or in_outer or attempt == RETRY_ATTEMPTS:
                    raise
                logger.warning(
                    "%s: %s, retrying (attempt %d)", func.__qualname__, exc.__cause__, attempt
                )
                time.sleep(0.02 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper
