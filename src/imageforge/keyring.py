"""Who is calling: API key verification with a cache that follows the database.

Key lookups happen on every request, so verified keys are cached in memory. A
background watcher compares a cheap fingerprint of the key table twice a second
and drops the cache when a key was created or revoked (by the CLI, another
process, another node), so such changes take effect within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from imageforge import apikeys
from imageforge.errors import AuthenticationFailed
from imageforge.ids import new_key_id
from imageforge.store import ApiKeyRecord, Store, StoreUnavailable
from imageforge.store.base import AuditOf

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.5
_MAX_CACHED = 100_000


class KeyRing:
    def __init__(self, store: Store) -> None:
        self._store = store
        # sha256 digest → record, or None for a key known not to work.
        self._cache: dict[bytes, ApiKeyRecord | None] = {}
        self._fingerprint: tuple[int, int] | None = None

    async def authenticate(self, presented: str | None) -> ApiKeyRecord:
        """The active key for a presented secret; one identical 401 for every failure."""
        if not presented:
            raise AuthenticationFailed()
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        try:
            record = self._cache[digest]
        except KeyError:
            record = await self._lookup(presented, digest)
        if record is None:
            raise AuthenticationFailed()
        return record

    async def _lookup(self, presented: str, digest: bytes) -> ApiKeyRecord | None:
        record = None
        if apikeys.is_well_formed(presented):
            found = await self._store.find_key(digest.hex())
            if found is not None and found.is_active:
                record = found
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = record
        return record

    async def refresh(self) -> None:
        fingerprint = await self._store.keys_fingerprint()
        if fingerprint != self._fingerprint:
            self._cache.clear()
            self._fingerprint = fingerprint

    async def watch(self) -> None:
        """Run until cancelled: drop the cache whenever the key table changes."""
        while True:
            try:
                await self.refresh()
            except StoreUnavailable:
                # Without a database we cannot see revocations: forget everything
                # so no revoked key keeps working through the outage.
                self._cache.clear()
                self._fingerprint = None
            except Exception:
                log.exception("key watcher failed; retrying")
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)


async def create_api_key(
    store: Store,
    name: str,
    *,
    balance_micros: int | None = None,
    admin: bool = False,
    task_api: bool = True,
    audit: AuditOf[ApiKeyRecord] | None = None,
) -> tuple[ApiKeyRecord, str]:
    """A new key: the record and the only copy of its secret. `admin`: it may call the
    admin API; `task_api`: it may create and read tasks (at least one of the two);
    `audit`: its audit entry, written in the same transaction (`Store.create_key`)."""
    if not (admin or task_api):
        raise ValueError("a key must be an admin key, a task-API key, or both")
    secret = apikeys.generate_api_key()
    record = await store.create_key(
        key_id=new_key_id(),
        name=name,
        key_hash=apikeys.hash_api_key(secret),
        hint=apikeys.display_hint(secret),
        now=time.time(),
        balance_micros=balance_micros,
        admin=admin,
        task_api=task_api,
        audit=audit,
    )
    return record, secret
