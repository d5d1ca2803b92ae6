"""One usage record row, the one way to build it and the one statement that writes it.

Three writers store the same row: `services.usage.usage_record_create` (one record, ORM
callers), `services.usage.usage_records_ingest` (the batch API) and the router's group commit
(async, `billing.aio.usage_rows_insert`). All of them build the row with `UsageRow.build`,
which applies the rules once (state, the key of a request without an ID, truncation to the
column lengths, the estimate), and write it with one of two forms of the same INSERT (one
column list, idempotent on (provider, request ID)): `USAGE_ROWS_INSERT_SQL` (arrays, any number
of rows in one statement: the sync writers) or `USAGE_ROW_INSERT_SQL` (one row per execution,
pipelined: the router).

Imported by the async router: this module needs only `billing.models` (already loaded there),
no database access at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from billing.models import UsageRecord, UsageState
from core.ids import object_id


def usage_state(*, byok: bool, request_id: str | None, http_status: int | None) -> str:
    """The state a routed request's record starts in: `byok` (the user's own key, never
    charged), `not_billable` (no request ID, or an error status: kept for provider health) or
    `pending` (to be charged once the provider reports its cost)."""
    if byok:
        return UsageState.BYOK
    if not request_id or http_status is None or not 200 <= http_status < 400:
        return UsageState.NOT_BILLABLE
    return UsageState.PENDING


def _max_length(name: str) -> int:
    return UsageRecord._meta.get_field(name).max_length


_REQUEST_ID_MAX = _max_length("request_id")
_HUB_MODEL_ID_MAX = _max_length("hub_model_id")
_PROVIDER_MODEL_MAX = _max_length("provider_model")
_TASK_MAX = _max_length("task")


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A usage record as stored; make one with `UsageRow.build`."""

    provider_id: int
    request_id: str
    user_id: int
    payer_id: int
    hub_model_id: str
    provider_model: str
    task: str
    http_status: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    estimated_cost_nanousd: int
    state: str
    created_at: datetime

    @classmethod
    def build(
        cls,
        *,
        provider_id: int,
        request_id: str | None,
        user_id: int,
        payer_id: int,
        hub_model_id: str,
        provider_model: str,
        task: str,
        http_status: int | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        estimated_cost_nanousd: int,
        byok: bool,
        created_at: datetime,
    ) -> UsageRow:
        """The row of one routed request:
        - its state (`usage_state`);
        - a request without a provider request ID is still recorded, under a key of our own
          that no provider answer can match: `no-request-id:<object id>`;
        - strings cut to their column's length;
        - the estimate is kept only while the record waits for its cost (`pending`): it counts
          against spending limits until then; otherwise 0. Never negative.
        """
        state = usage_state(byok=byok, request_id=request_id, http_status=http_status)
        return cls(
            provider_id=provider_id,
            request_id=(request_id or f"no-request-id:{object_id()}")[:_REQUEST_ID_MAX],
            user_id=user_id,
            payer_id=payer_id,
            hub_model_id=hub_model_id[:_HUB_MODEL_ID_MAX],
            provider_model=provider_model[:_PROVIDER_MODEL_MAX],
            task=task[:_TASK_MAX],
            http_status=http_status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            estimated_cost_nanousd=(
                max(estimated_cost_nanousd, 0) if state == UsageState.PENDING else 0
            ),
            state=state,
            created_at=created_at,
        )


# column -> PostgreSQL type, in `UsageRow` field order: the one column list.
_COLUMN_TYPES = {
    "provider_id": "bigint",
    "request_id": "text",
    "user_id": "bigint",
    "payer_id": "bigint",
    "hub_model_id": "text",
    "provider_model": "text",
    "task": "text",
    "http_status": "int",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "estimated_cost_nanousd": "bigint",
    "state": "text",
    "created_at": "timestamptz",
}
COLUMNS = tuple(_COLUMN_TYPES)  # a test checks they are UsageRow's fields, in order

# Both forms are built from the constants above only, never from input, and bind by column
# name (no position to shift).
_INSERT = f"INSERT INTO billing_usagerecord ({', '.join(COLUMNS)}, cost_attempts, cost_error) "
_ARRAYS = ", ".join(f"%({c})s::{t}[]" for c, t in _COLUMN_TYPES.items())
_VALUES = ", ".join(f"%({c})s" for c in COLUMNS)
_IDEMPOTENT = " ON CONFLICT (provider_id, request_id) DO NOTHING"
# Any number of rows in one statement.
USAGE_ROWS_INSERT_SQL = f"{_INSERT}SELECT *, 0, '' FROM unnest({_ARRAYS}){_IDEMPOTENT}"  # noqa: S608
# One row per execution: the router's group commit sends it with psycopg's `executemany`
# (pipelined, one round trip). For its usual batch of one or a few rows it costs less than the
# array form (bench/router_overhead.py: ~0.15 ms per request at concurrency 1).
USAGE_ROW_INSERT_SQL = f"{_INSERT}VALUES ({_VALUES}, 0, ''){_IDEMPOTENT}"


def usage_row_params(row: UsageRow) -> dict:
    """The parameters of `USAGE_ROW_INSERT_SQL`, by column name."""
    return {c: getattr(row, c) for c in COLUMNS}


def usage_rows_params(rows: Sequence[UsageRow]) -> dict[str, list]:
    """The parameters of `USAGE_ROWS_INSERT_SQL`: one array per column."""
    return {c: [getattr(row, c) for row in rows] for c in COLUMNS}


def usage_rows_insert(rows: Sequence[UsageRow]) -> int:
    """Writes the rows (one statement, Django's connection); returns how many were new."""
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(USAGE_ROWS_INSERT_SQL, usage_rows_params(rows))
        return cursor.rowcount
