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

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from billing.models import UsageRecord, UsageState
from core.ids import object_id


def usage_state(*, byok: bool, request_id: str | None, http_status: int | None) -> str:
    """The state a routed request's record starts in: `byok` (the user's own key, never
    charged), `not_billable` (no request ID, or a non-2xx status: an error, or a redirect the
    router never follows; kept for provider health) or
    `pending` (to be charged once the provider reports its cost)."""
    if byok:
        return UsageState.BYOK
    if not request_id or http_status is None or not 200 <= http_status < 300:
        return UsageState.NOT_BILLABLE
    return UsageState.PENDING


def _max_length(name: str) -> int:
    return UsageRecord._meta.get_field(name).max_length


_REQUEST_ID_MAX = _max_length("request_id")
_HUB_MODEL_ID_MAX = _max_length("hub_model_id")
_PROVIDER_MODEL_MAX = _max_length("provider_model")
_TASK_MAX = _max_length("task")
# Keys of our own for records no cost answer may match (followed by an object id).
LONG_REQUEST_ID = "long-request-id:"
REUSED_REQUEST_ID = "reused-request-id:"


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
    cost_error: str = ""  # why a record is not billable, when it is not the usual reason

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
        - so is one whose request ID is longer than the column (`long-request-id:<object id>`,
          `not_billable`, the reason in `cost_error`): never truncated, since a truncated ID
          matches no cost answer and could match another request's;
        - strings cut to their column's length;
        - the estimate is kept only while the record waits for its cost (`pending`): it counts
          against spending limits until then; otherwise 0. Never negative.
        """
        state = usage_state(byok=byok, request_id=request_id, http_status=http_status)
        cost_error = ""
        if request_id and len(request_id) > _REQUEST_ID_MAX:
            cost_error = (
                f"request ID of {len(request_id)} characters is longer than {_REQUEST_ID_MAX}: "
                f"not billable (it starts {request_id[:80]!r})"
            )
            request_id = f"{LONG_REQUEST_ID}{object_id()}"
            if state == UsageState.PENDING:
                state = UsageState.NOT_BILLABLE
        return cls(
            provider_id=provider_id,
            request_id=request_id or f"no-request-id:{object_id()}",
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
            cost_error=cost_error,
        )

    def reused(self, *, exact_time: bool = True) -> UsageRow:
        """This row under a key of our own, `not_billable`: its provider answered it with a
        request ID that another request of the same provider already has (charging it would
        charge the first request's payer). The key is a digest of the row (its time left out
        when it is not its own, `exact_time=False`), so writing it again is a no-op."""
        when = self.created_at.isoformat() if exact_time else ""
        fields = [self.provider_id, self.request_id, self.user_id, self.payer_id,
                  self.hub_model_id, self.provider_model, self.http_status, self.prompt_tokens,
                  self.completion_tokens, when]  # fmt: skip
        digest = hashlib.sha256(repr(fields).encode()).hexdigest()[:32]
        return dataclasses.replace(
            self,
            request_id=f"{REUSED_REQUEST_ID}{digest}",
            state=UsageState.NOT_BILLABLE,
            estimated_cost_nanousd=0,
            cost_error=f"the provider reused request ID {self.request_id[:200]!r}",
        )

    def same_request(self, stored: dict, *, exact_time: bool = True) -> bool:
        """Whether `stored` (a row already stored under this row's key, by column name) is
        this very request written again (a writer's retry), rather than another request the
        provider gave the same ID. `exact_time=False` for writers whose rows carry no time of
        their own (an ingested record without `createdAt`)."""
        same = all(
            stored[c] == getattr(self, c)
            for c in ("user_id", "payer_id", "hub_model_id", "provider_model", "http_status",
                      "prompt_tokens", "completion_tokens")
        )  # fmt: skip
        return same and (not exact_time or stored["created_at"] == self.created_at)


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
    "cost_error": "text",
}
COLUMNS = tuple(_COLUMN_TYPES)  # a test checks they are UsageRow's fields, in order

# Both forms are built from the constants above only, never from input, and bind by column
# name (no position to shift).
_INSERT = f"INSERT INTO billing_usagerecord ({', '.join(COLUMNS)}, cost_attempts) "
_ARRAYS = ", ".join(f"%({c})s::{t}[]" for c, t in _COLUMN_TYPES.items())
_VALUES = ", ".join(f"%({c})s" for c in COLUMNS)
_IDEMPOTENT = " ON CONFLICT (provider_id, request_id) DO NOTHING"
# Any number of rows in one statement.
USAGE_ROWS_INSERT_SQL = f"{_INSERT}SELECT *, 0 FROM unnest({_ARRAYS}){_IDEMPOTENT}"  # noqa: S608
# One row per execution: the router's group commit sends it with psycopg's `executemany`
# (pipelined, one round trip). For its usual batch of one or a few rows it costs less than the
# array form (bench/router_overhead.py: ~0.15 ms per request at concurrency 1).
USAGE_ROW_INSERT_SQL = f"{_INSERT}VALUES ({_VALUES}, 0){_IDEMPOTENT}"
RETURNING_KEY = " RETURNING request_id"
# The rows already stored under the keys of rows that conflicted (`UsageRow.same_request`).
STORED_ROWS_SQL = (
    "SELECT u.provider_id, u.request_id, u.user_id, u.payer_id, u.hub_model_id, "
    "u.provider_model, u.http_status, u.prompt_tokens, u.completion_tokens, u.created_at "
    "FROM billing_usagerecord u JOIN unnest(%s::bigint[], %s::text[]) AS k(p, r) "
    "ON u.provider_id = k.p AND u.request_id = k.r"
)
# Per provider, how many rows of a kind a batch had (billing health counters).
_HEALTH_COUNTERS = (
    "missing_request_ids_total",
    "reused_request_ids_total",
    "long_request_ids_total",
)


def _health_count_sql(column: str) -> str:
    """Adds a count per provider to one counter; built from the constants above only."""
    counts = ", ".join("count(*)" if c == column else "0" for c in _HEALTH_COUNTERS)
    return (
        "INSERT INTO billing_providerbillinghealth (provider_id, last_error, "  # noqa: S608
        "consecutive_failures, invalid_costs_total, unknown_ids_total, held_costs_total, "
        f"{', '.join(_HEALTH_COUNTERS)}) SELECT provider_id, '', 0, 0, 0, 0, {counts} "
        "FROM unnest(%s::bigint[]) AS t(provider_id) GROUP BY provider_id "
        f"ON CONFLICT (provider_id) DO UPDATE SET {column} = "
        f"billing_providerbillinghealth.{column} + EXCLUDED.{column}"
    )


HEALTH_COUNT_SQL = {column: _health_count_sql(column) for column in _HEALTH_COUNTERS}


def split_repeated_keys(rows: Sequence[UsageRow]) -> tuple[list[UsageRow], list[UsageRow]]:
    """The first row of each (provider, request ID) key, and the rows repeating a key already
    in the batch (two requests the provider gave one ID, both in one write): those are
    treated as conflicting with the first, never counted as written with it."""
    seen: set[tuple[int, str]] = set()
    first, repeated = [], []
    for row in rows:
        key = (row.provider_id, row.request_id)
        (repeated if key in seen else first).append(row)
        seen.add(key)
    return first, repeated


def reused_rows(
    rows: Sequence[UsageRow], conflicted: Sequence[UsageRow], stored: Sequence[dict], loose=()
) -> list[UsageRow]:
    """Of the rows that found their key taken, those that are not a retry of the stored row
    (`UsageRow.same_request`), each under a key of its own (`UsageRow.reused`). `loose`: ids
    (`id()`) of rows whose time is not their own."""
    by_key = {(s["provider_id"], s["request_id"]): s for s in stored}
    found = []
    for row in conflicted:
        existing = by_key.get((row.provider_id, row.request_id))
        if existing is None or row.same_request(existing, exact_time=id(row) not in loose):
            continue
        found.append(row.reused(exact_time=id(row) not in loose))
    return found


def health_counts(rows: Sequence[UsageRow]) -> dict[str, list[int]]:
    """The provider ids to count, per billing-health counter, for rows just written."""
    return {
        "long_request_ids_total": [
            r.provider_id for r in rows if r.request_id.startswith(LONG_REQUEST_ID)
        ],
        "reused_request_ids_total": [
            r.provider_id for r in rows if r.request_id.startswith(REUSED_REQUEST_ID)
        ],
    }


def usage_row_params(row: UsageRow) -> dict:
    """The parameters of `USAGE_ROW_INSERT_SQL`, by column name."""
    return {c: getattr(row, c) for c in COLUMNS}


def usage_rows_params(rows: Sequence[UsageRow]) -> dict[str, list]:
    """The parameters of `USAGE_ROWS_INSERT_SQL`: one array per column."""
    return {c: [getattr(row, c) for row in rows] for c in COLUMNS}


def usage_rows_insert(rows: Sequence[UsageRow], *, loose=()) -> int:
    """Writes the rows (Django's connection, inside the caller's transaction if any); returns
    how many were stored. A row whose (provider, request ID) is taken by the same request is
    a retry and writes nothing; by another request, it is stored under a key of its own
    (`reused_rows`) and counted in the provider's billing health, as are request IDs too long
    to store. `loose`: `id()`s of rows whose time is not their own (see `reused_rows`)."""
    if not rows:
        return 0
    first, repeated = split_repeated_keys(rows)
    with connection.cursor() as cursor:
        cursor.execute(USAGE_ROWS_INSERT_SQL, usage_rows_params(first))
        written = cursor.rowcount
        # Every row new (the usual case): nothing to compare. Otherwise each row is compared
        # with what is stored under its key (its own row, just written, is the same request).
        conflicted = [*first, *repeated] if written < len(rows) else []
        reused = []
        if conflicted:
            cursor.execute(
                STORED_ROWS_SQL,
                [[r.provider_id for r in conflicted], [r.request_id for r in conflicted]],
            )
            names = [c.name for c in cursor.description]
            stored = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            reused = reused_rows(rows, conflicted, stored, loose)
            if reused:  # rare: RETURNING tells which are new (a retry's are not)
                cursor.execute(USAGE_ROWS_INSERT_SQL + RETURNING_KEY, usage_rows_params(reused))
                new = {key for (key,) in cursor.fetchall()}
                reused = [r for r in reused if r.request_id in new]
        for column, provider_ids in health_counts([*rows, *reused]).items():
            if provider_ids:
                cursor.execute(HEALTH_COUNT_SQL[column], [provider_ids])
    return written + len(reused)
