"""The operators' use cases: keys, credits, usage, any task, and the audit of it all.

The admin API (`api/routes/admin.py`) and the command line on the database (`imageforge
keys …`) both act through `AdminService`, so every action, read or write, is written to
the audit table with who did it (an admin key's id, or `cli`), what, to which key or task,
its parameters (never a secret) and the request id. A write's entry is written in the
write's own transaction (`procedures.audited`): the change and its record commit together
or not at all; a read's entry after the read.

Key kinds: a task-API key (the default) creates and reads tasks; an admin key
(`--admin`) calls the admin API and nothing else; `--admin --task-api` makes a key that
does both. The kind is fixed when the key is created.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imageforge.errors import InvalidRequest, NotFound
from imageforge.ids import KeyId, TaskId
from imageforge.keyring import create_api_key
from imageforge.store import ApiKeyRecord, Store
from imageforge.store.base import AuditEntry, UsageRow
from imageforge.tasks import Task

#: The command line's actor in the audit (it needs no key: it holds the database).
CLI_ACTOR = "cli"
MAX_AUDIT_PAGE = 500


@dataclass(frozen=True)
class Actor:
    """Who acts: an admin key's id or `cli`, and the request that carried it."""

    name: str
    request_id: str | None = None


def key_not_found(key_id: str) -> NotFound:
    return NotFound(f"no key with id {key_id}", param="key_id", code="key_not_found")


class AdminService:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def _entry(
        self, actor: Actor, action: str, target: str | None, details: dict[str, Any]
    ) -> AuditEntry:
        return AuditEntry(
            at=self._clock(),
            actor=actor.name,
            action=action,
            target=target,
            details=details,
            request_id=actor.request_id,
        )

    async def _audit(
        self, actor: Actor, action: str, target: str | None, details: dict[str, Any]
    ) -> None:
        """A read's entry, after it (a write's goes in the write's own transaction)."""
        await self._store.record_audit(self._entry(actor, action, target, details))

    async def list_keys(self, actor: Actor) -> list[ApiKeyRecord]:
        keys = await self._store.list_keys()
        await self._audit(actor, "keys.list", None, {})
        return keys

    async def create_key(
        self,
        actor: Actor,
        *,
        name: str,
        balance_micros: int | None,
        admin: bool = False,
        task_api: bool = True,
    ) -> tuple[ApiKeyRecord, str]:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("name: must be 1 to 200 characters", param="name")
        if not (admin or task_api):
            raise InvalidRequest(
                "task_api: a key that is not an admin key must be able to use the task API",
                param="task_api",
            )
        details = {"name": name, "balance_micros": balance_micros, "admin": admin}
        details["task_api"] = task_api
        return await create_api_key(
            self._store,
            name,
            balance_micros=balance_micros,
            admin=admin,
            task_api=task_api,
            audit=lambda record: self._entry(actor, "keys.create", record.id, details),
        )

    async def revoke_key(self, actor: Actor, key_id: str) -> ApiKeyRecord:
        entry = self._entry(actor, "keys.revoke", key_id, {})
        revoked = await self._store.revoke_key(
            KeyId(key_id), now=self._clock(), audit=lambda revoked: entry if revoked else None
        )
        if not revoked:
            existing = await self._store.get_key(KeyId(key_id))
            if existing is None:
                raise key_not_found(key_id)
            raise InvalidRequest(f"key {key_id} is already revoked", param="key_id")
        record = await self._store.get_key(KeyId(key_id))
        assert record is not None
        return record

    async def adjust_credits(
        self,
        actor: Actor,
        key_id: str,
        *,
        add_micros: int | None = None,
        set_micros: int | None = None,
        unlimited: bool = False,
    ) -> ApiKeyRecord:
        """Exactly one of add, set, unlimited (the store's ledger rules apply)."""
        if (add_micros is not None) + (set_micros is not None) + unlimited != 1:
            raise InvalidRequest("give exactly one of add, set, unlimited", param="action")
        details: dict[str, Any] = {"add_micros": add_micros, "set_micros": set_micros}
        details["unlimited"] = unlimited

        def entry(record: ApiKeyRecord) -> AuditEntry:
            after = {**details, "balance_micros": record.balance_micros}
            return self._entry(actor, "keys.credits", key_id, after)

        return await self._store.adjust_balance(
            KeyId(key_id),
            add_micros=add_micros,
            set_micros=set_micros,
            unlimited=unlimited,
            note=f"admin {actor.name}",
            now=self._clock(),
            audit=entry,
        )

    async def key_usage(
        self, actor: Actor, key_id: str, *, days: int
    ) -> tuple[ApiKeyRecord, list[UsageRow]]:
        key = await self._store.get_key(KeyId(key_id))
        if key is None:
            raise key_not_found(key_id)
        rows = await self._store.usage(KeyId(key_id), since=self._clock() - days * 86_400)
        await self._audit(actor, "keys.usage", key_id, {"days": days})
        return key, rows

    async def get_task(self, actor: Actor, task_id: str) -> Task:
        """Any key's task (an operator's view: the prompt, the attempts, the upstream)."""
        task = await self._store.get_task(TaskId(task_id))
        if task is None:
            raise NotFound(f"no task with id {task_id!r}", param="task_id", code="task_not_found")
        await self._audit(actor, "tasks.get", task_id, {})
        return task

    async def audit(
        self, actor: Actor, *, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]:
        entries = await self._store.list_audit(
            limit=min(limit, MAX_AUDIT_PAGE), before_id=before_id
        )
        await self._audit(actor, "audit.list", None, {"limit": limit, "before_id": before_id})
        return entries
