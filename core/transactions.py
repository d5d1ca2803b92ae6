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
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.transaction import TransactionManagementError

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
