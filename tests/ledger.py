"""The ledger as the database holds it, for tests: the stores have no method to read it
(nothing in imageforge needs the raw rows), so this reads the table itself, on either
backend, through its own connection."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass

import asyncpg

from imageforge.store.sqlite import sqlite_path
from imageforge.store.urls import asyncpg_dsn, database_backend

_QUERY = "SELECT kind, amount_micros, task_id FROM ledger WHERE key_id = {} ORDER BY id"


@dataclass(frozen=True)
class LedgerEntry:
    #: "charge" (negative), "refund" (positive) or "credit" (an operator's grant).
    kind: str
    amount_micros: int
    task_id: str | None


async def ledger_entries(database_url: str, key_id: str) -> list[LedgerEntry]:
    """One key's ledger entries, oldest first."""
    if database_backend(database_url) == "postgresql":
        connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=3)
        try:
            rows = await connection.fetch(_QUERY.format("$1"), key_id)
        finally:
            await connection.close()
    else:
        with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as db:
            rows = db.execute(_QUERY.format("?"), (key_id,)).fetchall()
    return [LedgerEntry(kind, amount, task_id) for kind, amount, task_id in rows]


async def ledger_sum(database_url: str, key_id: str) -> int:
    return sum(entry.amount_micros for entry in await ledger_entries(database_url, key_id))
