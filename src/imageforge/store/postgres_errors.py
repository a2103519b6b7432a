"""How the PostgreSQL store reads the driver's errors: unavailable (503), a duplicate
(409), or a transaction the server rolled back, which is run again."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from imageforge.errors import ImageforgeError
from imageforge.store import base
from imageforge.store.base import StoreConflict, StoreUnavailable

_log = logging.getLogger(__name__)

S = TypeVar("S")
P = ParamSpec("P")
T = TypeVar("T")

# Errors that say "the database cannot be reached or cannot serve right now", as
# opposed to a bug in a statement. TimeoutError covers connect and command timeouts.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
)
#: Runs of one call when the server keeps rolling it back (deadlock, serialization).
_ROLLBACK_RETRIES = 3
_KEY_COLUMNS = re.compile(r"^Key \(([^)]*)\)=")


class _RolledBack(StoreUnavailable):
    """The server rolled the call's transaction back (SQLSTATE class 40: a deadlock it
    broke, a serialization failure): nothing was written and running it again is safe.
    Calls that are not retried report it as unavailable (503)."""


class DriverErrors(base.DriverErrors):
    def __init__(self) -> None:
        self.pool: Any = None

    def translate(self, exc: BaseException) -> ImageforgeError | None:
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            # asyncpg can leave a connection whose backend was terminated mid-operation
            # in a broken protocol state (MagicStack/asyncpg#1069); the pool would hand
            # it out again. Expiring the pool's connections makes it reconnect instead.
            if self.pool is not None:
                asyncio.get_running_loop().create_task(self.pool.expire_connections())
            return StoreUnavailable()
        if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
            return _conflict(exc)
        if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
            return _RolledBack()
        if isinstance(exc, UNAVAILABLE) and not isinstance(
            exc, asyncpg.exceptions.ClientConfigurationError
        ):
            return StoreUnavailable()
        return None


def _conflict(exc: Any) -> StoreConflict:
    """From the server's detail, "Key (key_hash)=(…) already exists." (values are never
    shown)."""
    columns = _KEY_COLUMNS.match(getattr(exc, "detail", None) or "")
    what = columns.group(1) if columns else getattr(exc, "constraint_name", None) or "key"
    return StoreConflict(getattr(exc, "table_name", None) or "row", what)


def retried_when_rolled_back(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Run a write again when the server rolled its transaction back (`_RolledBack`)."""

    @functools.wraps(method)
    async def retried(store: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        for run in range(1, _ROLLBACK_RETRIES + 1):
            try:
                return await method(store, *args, **kwargs)
            except _RolledBack:
                if run == _ROLLBACK_RETRIES:
                    raise
        raise AssertionError("unreachable")

    return retried


def ignore_cancelled_handshakes(loop: asyncio.AbstractEventLoop) -> None:
    """Keep asyncpg's known cancellation leftover out of the error log.

    A connection whose TLS negotiation (sslmode `prefer`, the default) is cancelled, as a stop
    during start-up cancels every connect in flight, leaves asyncpg an internal future failed
    with `ConnectionError('unexpected connection_lost() call')` that nothing awaits
    (MagicStack/asyncpg#1211, #1310); asyncio then logs it at ERROR when it is collected. That
    one leftover is logged at debug; everything else goes to the handler there was."""
    if getattr(loop, "_imageforge_handshakes_ignored", False):
        return
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, ConnectionError) and str(error) == "unexpected connection_lost() call":
            _log.debug("a cancelled PostgreSQL handshake: %s", context.get("message"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    loop._imageforge_handshakes_ignored = True  # type: ignore[attr-defined]
