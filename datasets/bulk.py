"""Fast bulk writes for imports: PostgreSQL's COPY, or executemany elsewhere. Rows are plain tuples."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection


def _sql_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return value


def bulk_insert(table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    names = ", ".join(columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            raw = cursor.cursor  # psycopg's own cursor, for COPY
            with raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([_sql_value(v) for v in row])
        else:
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608 (table and columns are ours)
                [[_sql_value(v) for v in row] for row in rows],
            )


def insert_assets_ignoring_known(rows: Sequence[tuple[str, int, int, int, str, Any]]) -> None:
    """Insert (sha1, width, height, size_bytes, format, created_at) rows; sha1s already stored are skipped."""
    columns = "sha1, width, height, size_bytes, format, has_thumbnail, decode_failed, created_at"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS ymir_new_assets (sha1 varchar(40), width integer, "
                "height integer, size_bytes bigint, format varchar(8), has_thumbnail boolean, decode_failed boolean, "
                "created_at timestamptz)"
            )
            cursor.execute("TRUNCATE ymir_new_assets")
            with cursor.cursor.copy(f"COPY ymir_new_assets ({columns}) FROM STDIN") as copy:
                for sha1, width, height, size, fmt, created in rows:
                    copy.write_row([sha1, width, height, size, fmt, False, False, created])
            cursor.execute(
                f"INSERT INTO datasets_asset ({columns}) SELECT {columns} FROM ymir_new_assets "  # noqa: S608
                "ON CONFLICT (sha1) DO NOTHING"
            )
        else:
            cursor.executemany(
                f"INSERT OR IGNORE INTO datasets_asset ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",  # noqa: S608
                [(sha1, w, h, size, fmt, False, False, created) for sha1, w, h, size, fmt, created in rows],
            )
