"""Keyset pagination, newest first, for ledger transactions and usage records.

Pages are ordered by (created_at, id) descending and the cursor is the last row's key, so a
page costs one indexed range query however deep it is, rows inserted meanwhile neither shift
nor repeat rows, and any number of rows may share a timestamp (a cost batch charges thousands
of requests at one instant; DRF's CursorPagination would loop past 1,000 ties). There is no
total count: counting a payer's usage on every page would cost more than the page.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from rest_framework.pagination import BasePagination
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from core.pagination import decode_time_cursor, encode_time_cursor, parse_limit


class NewestFirstPagination(BasePagination):
    """`{"next": <url or null>, "results": [...]}`; follow `next` until it is null."""

    page_size = 100
    max_page_size = 1000
    cursor_query_param = "cursor"
    page_size_query_param = "limit"

    def get_page_size(self, request) -> int:
        return parse_limit(
            request.query_params.get(self.page_size_query_param),
            default=self.page_size,
            maximum=self.max_page_size,
        )

    @staticmethod
    def encode_cursor(row) -> str:
        return encode_time_cursor(row.created_at, row.pk)

    def decode_cursor(self, request) -> tuple[datetime, int] | None:
        raw = request.query_params.get(self.cursor_query_param)
        if raw is None:
            return None
        return decode_time_cursor(raw, source="`next` link")

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        size = self.get_page_size(request)
        after = self.decode_cursor(request)
        if after is not None:
            moment, pk = after
            # A row comparison is one index range; the equivalent OR of two conditions can
            # make PostgreSQL rescan from the start of the index (seen in cost polling).
            table = connection.ops.quote_name(queryset.model._meta.db_table)
            column = connection.ops.quote_name(queryset.model._meta.pk.column)
            queryset = queryset.extra(  # noqa: S610 (identifiers from the model, values bound)
                where=[f"({table}.created_at, {table}.{column}) < (%s, %s)"], params=[moment, pk]
            )
        rows = list(queryset.order_by("-created_at", "-pk")[: size + 1])
        self.next_cursor = self.encode_cursor(rows[size - 1]) if len(rows) > size else None
        return rows[:size]

    def get_next_link(self) -> str | None:
        if self.next_cursor is None:
            return None
        url = self.request.build_absolute_uri()
        return replace_query_param(url, self.cursor_query_param, self.next_cursor)

    def get_paginated_response(self, data):
        return Response({"next": self.get_next_link(), "results": data})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["next", "results"],
            "properties": {
                "next": {"type": "string", "format": "uri", "nullable": True},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "From the `next` link of the previous page.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Page size: at least 1, default {self.page_size}; more than "
                f"{self.max_page_size} is served as {self.max_page_size}.",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                },
            },
        ]
