"""The test suite's two database roles (docs/operations.md "Database roles").

The test database is created and migrated as the tables' owner (`DATABASE_OWNER_URL`, the
`owner` alias of config/settings.py, a test mirror of `default`); every test then connects as
the application role (`DATABASE_URL`) with its real, production privileges, and so do the web
and Celery processes the tests start (`testsupport.processes.subprocess_env`).

Django empties the tables between transactional tests with TRUNCATE, which the application may
not do: that flush runs as the owner, on a connection of its own, with
`billing.allow_ledger_truncate` set (the ledger's TRUNCATE guard lets the owner through with
it and nobody else; billing migration 0007). Nothing but this flush sets it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.postgresql.operations import DatabaseOperations

OWNER = "owner"


def owner_settings() -> dict | None:
    """The owner's connection settings, or None when only one role is configured."""
    return connections.settings.get(OWNER)


def _use_credentials(user: str, password: str) -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    connection.close()
    connection.close_pool()  # the pool keeps connections of the previous role
    connection.settings_dict["USER"] = user
    connection.settings_dict["PASSWORD"] = password


_application: tuple[str, str] | None = None


def default_as_owner() -> None:
    """`default` connects as the owner (creating, migrating and dropping the test database)."""
    global _application
    owner = owner_settings()
    if owner is None:
        return
    connections[OWNER].close()  # a test's owner connection would keep the database in use
    current = connections[DEFAULT_DB_ALIAS].settings_dict
    if _application is None:
        _application = (current["USER"], current["PASSWORD"])
    _use_credentials(owner["USER"], owner["PASSWORD"])


def default_as_application() -> None:
    """`default` connects with the application's credentials again (every test)."""
    if _application is not None:
        _use_credentials(*_application)


def owner_connect(**kwargs) -> psycopg.Connection:
    """A new connection as the owner to the database `default` uses now (the test database)."""
    owner, db = owner_settings(), connections[DEFAULT_DB_ALIAS].settings_dict
    if owner is None:
        raise RuntimeError("DATABASE_OWNER_URL is not set: the tests need both roles")
    return psycopg.connect(
        host=db["HOST"],
        port=db["PORT"] or None,
        dbname=db["NAME"],
        user=owner["USER"],
        password=owner["PASSWORD"] or None,
        **kwargs,
    )


_original_flush = DatabaseOperations.execute_sql_flush


def _owner_flush(ops: DatabaseOperations, sql_list: list[str]) -> None:
    if ops.connection.alias != DEFAULT_DB_ALIAS or owner_settings() is None:
        _original_flush(ops, sql_list)
        return
    with owner_connect() as owner, owner.cursor() as cursor:  # commits on success
        cursor.execute("SET LOCAL billing.allow_ledger_truncate = 'on'")
        for sql in sql_list:
            cursor.execute(sql)


@contextlib.contextmanager
def flush_as_owner() -> Iterator[None]:
    """While active, Django's flush of `default` (between transactional tests) runs as the
    owner."""
    with mock.patch.object(DatabaseOperations, "execute_sql_flush", _owner_flush):
        yield
