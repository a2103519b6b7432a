"""Readiness: may this process take traffic? Database, schema and storage, in that order.

Each failed check is a ServiceUnavailable (503) whose message names it, e.g. "not ready:
the database is unreachable (…)"; nothing is cached, so the answer turns back to 200 as
soon as what failed works again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imageforge.errors import ConfigurationError, ServiceUnavailable
from imageforge.storage.probe import check_storage
from imageforge.store import StoreUnavailable

if TYPE_CHECKING:
    from imageforge.runtime import Runtime


class NotReady(ServiceUnavailable):
    code = "not_ready"


async def check_ready(runtime: Runtime) -> None:
    try:
        revision = await runtime.store.schema_revision()
    except StoreUnavailable as exc:
        raise NotReady(f"not ready: the database is unreachable ({exc.message})") from None
    if revision != runtime.schema_head:
        raise NotReady(
            f"not ready: the database schema is at migration {revision or 'none'}, this "
            f"version needs {runtime.schema_head}; run `imageforge db upgrade`"
        )
    try:
        await check_storage(
            runtime.storage, location=runtime.storage_location, check="readiness check"
        )
    except ConfigurationError as exc:
        raise NotReady(f"not ready: {exc.message}") from None
