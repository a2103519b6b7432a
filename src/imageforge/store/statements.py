"""Statement text both stores run, written once.

A template is PostgreSQL text with `$n` placeholders, rendered for each database:

- `{now}` is the store's clock, always parameter `$1`. On PostgreSQL it is the
  database's clock unless the store was given one (`coalesce($1, now())`): every node
  then agrees on leases and schedules whatever its own clock says. On SQLite, one
  machine, it is the store's `clock()`, passed as `$1`.
- `{lock}` locks the rows a read returns until the transaction ends (PostgreSQL's
  `FOR UPDATE`); SQLite's writer already holds the whole database.
- `{day:COLUMN}` is the UTC date (YYYY-MM-DD) of a Unix-seconds column.

SQLite takes `?NNN` for PostgreSQL's `$NNN`, and numbered placeholders may repeat.
Statements that differ by more than this (claims, rescues, refunds) live in their
store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imageforge.store.rows import KEY_COLUMNS, TASK_COLUMNS


@dataclass(frozen=True, slots=True)
class Dialect:
    now: str
    lock: str
    #: `{}` takes the column.
    day: str

    def render(self, template: str) -> str:
        return template.format(now=self.now, lock=self.lock, day=_Day(self.day))


class _Day:
    def __init__(self, expression: str) -> None:
        self._expression = expression

    def __format__(self, column: str) -> str:
        return self._expression.format(column)


def postgres_now(parameter: str = "$1") -> str:
    """The store's clock on PostgreSQL: the parameter if the store was given a clock
    (tests that move time), else the database's (stable within a statement)."""
    return f"coalesce({parameter}::float8, extract(epoch FROM now())::float8)"


POSTGRES = Dialect(
    now=postgres_now(),
    lock=" FOR UPDATE",
    day="to_char(to_timestamp({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
)
SQLITE = Dialect(now="$1", lock="", day="date({}, 'unixepoch')")
_PLACEHOLDER = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Statement:
    #: As written, for a store that builds a larger statement around it.
    template: str
    postgres: str
    sqlite: str


def for_postgres(template: str) -> str:
    return POSTGRES.render(template)


def for_sqlite(template: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", SQLITE.render(template))


def shared(template: str) -> Statement:
    return Statement(template, postgres=for_postgres(template), sqlite=for_sqlite(template))


# Keys ---------------------------------------------------------------------------------

INSERT_KEY = shared(
    "INSERT INTO api_keys (id, name, key_hash, hint, created_at, balance_micros, admin, task_api, "
    "webhook_secret) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
GET_KEY = shared(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")
FIND_KEY = shared(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1")
LIST_KEYS = shared(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
REVOKE_KEY = shared(
    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id"
)
KEYS_FINGERPRINT = shared("SELECT count(*), count(revoked_at) FROM api_keys")
# The row lock makes concurrent charges wait, so the ledger sum read after it includes
# every charge that committed before the change.
LOCK_BALANCE = shared("SELECT balance_micros FROM api_keys WHERE id = $1{lock}")
SET_BALANCE = shared("UPDATE api_keys SET balance_micros = $1 WHERE id = $2")
LEDGER_SUM = shared(
    "SELECT CAST(coalesce(sum(amount_micros), 0) AS BIGINT) FROM ledger WHERE key_id = $1"
)
BOOK_CREDIT = shared(
    "INSERT INTO ledger (key_id, kind, amount_micros, note, created_at) "
    "VALUES ($1, 'credit', $2, $3, $4)"
)

# The admin audit -----------------------------------------------------------------------

_AUDIT_COLUMNS = "id, at, actor, action, target, details, request_id"
INSERT_AUDIT = shared(
    "INSERT INTO admin_audit (at, actor, action, target, details, request_id) "
    "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"
)
LIST_AUDIT = shared(
    f"SELECT {_AUDIT_COLUMNS} FROM admin_audit WHERE (CAST($1 AS BIGINT) IS NULL OR id < $1) "
    "ORDER BY id DESC LIMIT $2"
)

# Idempotency keys and request counters -----------------------------------------------

# ON CONFLICT DO NOTHING waits for a concurrent insert of the same key to commit or
# roll back, so of two requests with one key exactly one takes it.
TAKE_IDEMPOTENCY_KEY = shared(
    "INSERT INTO idempotency_keys (key_id, idempotency_key, request_hash, task_id, created_at) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1"
)
READ_IDEMPOTENCY_KEY = shared(
    "SELECT request_hash, task_id, created_at FROM idempotency_keys "
    "WHERE key_id = $1 AND idempotency_key = $2{lock}"
)
FORGET_IDEMPOTENCY_KEY = shared(
    "DELETE FROM idempotency_keys WHERE key_id = $1 AND idempotency_key = $2"
)
PRUNE_IDEMPOTENCY_KEYS = shared("DELETE FROM idempotency_keys WHERE created_at < $1")
COUNT_REQUEST = shared(
    "INSERT INTO rate_limit_windows (key_id, window_start, hits) VALUES ($1, $2, 1) "
    "ON CONFLICT (key_id, window_start) DO UPDATE SET hits = rate_limit_windows.hits + 1 "
    "RETURNING hits"
)
PRUNE_REQUEST_COUNTS = shared("DELETE FROM rate_limit_windows WHERE window_start < $1")

# Usage: task counts and ledger spend per (UTC day, model) since a time ---------------

USAGE_COUNTS = shared(
    "SELECT {day:created_at} AS day, model, count(*), "
    "sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN status IN ('queued', 'processing') THEN 1 ELSE 0 END) "
    "FROM tasks WHERE key_id = $1 AND created_at >= $2 GROUP BY day, model"
)
# A refund is reported on the day of its task, so it cancels that day's charge. Only
# the ledger is read (a task's charge row carries its model and creation time), so the
# spend and the refunds stay what they were after retention deleted the task rows.
USAGE_SPEND = shared(
    "SELECT {day:c.created_at} AS day, c.model, CAST(-sum(l.amount_micros) AS BIGINT), "
    "CAST(sum(CASE WHEN l.kind = 'refund' THEN l.amount_micros ELSE 0 END) AS BIGINT), "
    "sum(CASE WHEN l.kind = 'refund' THEN 1 ELSE 0 END) "
    "FROM ledger l JOIN ledger c ON c.task_id = l.task_id AND c.kind = 'charge' "
    "WHERE l.key_id = $1 AND c.created_at >= $2 AND l.kind IN ('charge', 'refund') "
    "GROUP BY day, c.model"
)

# Tasks --------------------------------------------------------------------------------

GET_TASK = shared(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")
COUNT_UNFINISHED = shared(
    "SELECT count(*) FROM tasks WHERE key_id = $1 AND status IN ('queued', 'processing')"
)
COUNT_BY_STATUS = shared("SELECT status, count(*) FROM tasks GROUP BY status")
#: Alembic's record of the migration the schema is at.
SCHEMA_REVISION = shared("SELECT version_num FROM alembic_version")

# Every transition below applies only to the holder of the attempt, while processing.
_HELD = "id = $2 AND attempt = $3 AND status = 'processing'"

COMPLETE = shared(
    "UPDATE tasks SET status = 'completed', image_key = $4, content_type = $5, usage = $6, "
    "upstream = coalesce($7, upstream), error = NULL, error_code = NULL, progress = 100, "
    "lease_expires_at = NULL, finished_at = {now}, updated_at = {now} "
    f"WHERE {_HELD} RETURNING id, key_id, callback"
)
# Progress only rises within an attempt (a figure that arrives late changes nothing).
RECORD_PROGRESS = shared(
    "UPDATE tasks SET progress = $4, updated_at = {now} "
    f"WHERE {_HELD} AND (progress IS NULL OR progress < $4) RETURNING id"
)
RECORD_UPSTREAM = shared(
    "UPDATE tasks SET upstream = $4, upstream_task_id = $5, updated_at = {now} "
    f"WHERE {_HELD} RETURNING id"
)
# The retry delay is counted on the store's clock, so it holds whatever the worker's says.
REQUEUE = shared(
    "UPDATE tasks SET status = 'queued', run_after = {now} + $4, error = $5, error_code = $6, "
    "progress = NULL, "
    "lease_expires_at = NULL, worker_id = NULL, updated_at = {now} "
    f"WHERE {_HELD} RETURNING id"
)
# The attempt counter never goes down (it is the fencing token), so a hand-back raises
# the budget instead of refunding the attempt.
RELEASE = shared(
    "UPDATE tasks SET status = 'queued', run_after = {now}, max_attempts = max_attempts + 1, "
    "progress = NULL, lease_expires_at = NULL, worker_id = NULL, updated_at = {now} "
    f"WHERE {_HELD} RETURNING id"
)
# Failing, in the store's own statement, refunds too: (id, key_id, price_micros, model).
FAIL = shared(
    "UPDATE tasks SET status = 'failed', error = $4, error_code = $5, "
    "lease_expires_at = NULL, finished_at = {now}, updated_at = {now} "
    f"WHERE {_HELD} RETURNING id, key_id, price_micros, model, callback"
)

# Retention and the janitor's sweeps --------------------------------------------------

# Free when never taken or run out (on the store's clock); of two nodes taking it at
# once, the second's ON CONFLICT sees the first's fresh lease and takes nothing.
TAKE_SWEEP_LEASE = shared(
    "INSERT INTO sweep_leases (name, holder, expires_at) VALUES ($2, $3, {now} + $4) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at WHERE sweep_leases.expires_at <= {now} "
    "RETURNING holder"
)
IMAGES_PAST_RETENTION = shared(
    "SELECT id, image_key FROM tasks WHERE image_key IS NOT NULL AND status = 'completed' "
    "AND finished_at < $1 ORDER BY finished_at LIMIT $2"
)
# Only while the row still names the image that was deleted.
FORGET_IMAGE = shared(
    "UPDATE tasks SET image_key = NULL, updated_at = {now} "
    "WHERE id = $2 AND status = 'completed' AND image_key = $3 RETURNING id"
)
# A row whose image is still stored is never deleted (its image would be orphaned for
# good); ledger rows are never touched.
_FINISHED_WITHOUT_IMAGE = (
    "status IN ('completed', 'failed') AND finished_at < $1 AND image_key IS NULL"
)
DELETE_FINISHED_TASKS = shared(
    f"DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE {_FINISHED_WITHOUT_IMAGE} "
    f"ORDER BY finished_at LIMIT $2) AND {_FINISHED_WITHOUT_IMAGE} RETURNING id"
)

# Listing: a key's tasks newest first, by keyset on `seq` (no OFFSET: each page is an index
# range scan from the cursor). One statement per combination of filters, so each can use
# its own index.
_LIST = f"SELECT {TASK_COLUMNS}, seq FROM tasks WHERE key_id = $1 AND seq < $2"


def _listing(status: bool, model: bool) -> Statement:
    filters = [column for column, used in (("status", status), ("model", model)) if used]
    where = "".join(f" AND {column} = ${n}" for n, column in enumerate(filters, start=4))
    return shared(f"{_LIST}{where} ORDER BY seq DESC LIMIT $3")


#: By (status given, model given); arguments: key id, seq bound, limit, then the filters.
LIST_TASKS = {
    (status, model): _listing(status, model) for status in (False, True) for model in (False, True)
}
#: The cursor: where a key's task stands in creation order.
TASK_SEQ = shared("SELECT seq FROM tasks WHERE id = $1 AND key_id = $2")

# Cancel -------------------------------------------------------------------------------

# A queued task never runs: it fails at once (refunded in the same transaction).
CANCEL_QUEUED = shared(
    "UPDATE tasks SET status = 'failed', error = $3, error_code = $4, progress = NULL, "
    "lease_expires_at = NULL, worker_id = NULL, finished_at = {now}, updated_at = {now} "
    "WHERE id = $2 AND status = 'queued' RETURNING id, key_id, price_micros, model, callback"
)
# A processing task is the worker's: it is asked to stop (the lease keeper sees the mark).
REQUEST_CANCEL = shared(
    "UPDATE tasks SET cancel_requested_at = {now}, updated_at = {now} "
    "WHERE id = $2 AND status = 'processing' AND cancel_requested_at IS NULL RETURNING id"
)
# The unique (task_id, kind) index makes a second refund of one task impossible.
BOOK_REFUND = shared(
    "INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at) "
    "VALUES ($2, $3, 'refund', $4, $5, {now}) "
    "ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING RETURNING id"
)
CREDIT_REFUND = shared(
    "UPDATE api_keys SET balance_micros = balance_micros + $1 "
    "WHERE id = $2 AND balance_micros IS NOT NULL"
)

# Webhooks: the outbox ---------------------------------------------------------------


def outbox_insert(source: str, where: str = "") -> str:
    """The delivery of every finished task in `source` (a table or a CTE with id, key_id
    and callback) that has a callback; a task is delivered at most once (its id is the
    delivery's key)."""
    return (
        "INSERT INTO webhook_deliveries (task_id, key_id, callback, state, attempts, "
        "next_attempt_at, created_at, updated_at) "
        "SELECT id, key_id, callback, 'pending', 0, {now}, {now}, {now} "
        f"FROM {source} WHERE callback IS NOT NULL{where} ON CONFLICT (task_id) DO NOTHING"
    )


#: After a terminal transition, in its transaction (statement by statement stores).
ENQUEUE_WEBHOOK = shared(
    outbox_insert("tasks", " AND id = $2 AND status IN ('completed', 'failed')")
)
# Fenced by the attempts seen at claim time: a sender whose claim ran out (and whose
# delivery another sender took) records nothing.
RECORD_WEBHOOK_ATTEMPT = shared(
    "UPDATE webhook_deliveries SET attempts = attempts + 1, state = $4, "
    "next_attempt_at = {now} + $5, updated_at = {now} "
    "WHERE task_id = $2 AND attempts = $3 AND state = 'pending' "
    "RETURNING attempts, next_attempt_at"
)
BOOK_WEBHOOK_ATTEMPT = shared(
    "INSERT INTO webhook_attempts (task_id, attempt, at, status_code, error, next_attempt_at) "
    "VALUES ($2, $3, {now}, $4, $5, $6)"
)
WEBHOOK_ATTEMPTS = shared(
    "SELECT attempt, at, status_code, error, next_attempt_at FROM webhook_attempts "
    "WHERE task_id = $1 ORDER BY attempt"
)
FORGET_WEBHOOK = shared("DELETE FROM webhook_deliveries WHERE task_id = $1")
FORGET_WEBHOOK_ATTEMPTS = shared("DELETE FROM webhook_attempts WHERE task_id = $1")
WEBHOOK_SECRETS = shared(
    "SELECT webhook_secret, previous_webhook_secret, previous_webhook_secret_until "
    "FROM api_keys WHERE id = $1"
)
SET_WEBHOOK_SECRET = shared("UPDATE api_keys SET webhook_secret = $2 WHERE id = $1")
# The old secret keeps signing (beside the new one) for `$4` seconds.
ROTATE_WEBHOOK_SECRET = shared(
    "UPDATE api_keys SET previous_webhook_secret = webhook_secret, "
    "previous_webhook_secret_until = {now} + $4, webhook_secret = $3 "
    "WHERE id = $2 RETURNING id"
)

# Announce a change to other processes inside the transaction that made it (PostgreSQL's
# NOTIFY goes out on commit). SQLite has no such thing; its statement only selects.
ANNOUNCE_CHANGE = Statement(
    "SELECT pg_notify('imageforge_task_changes', $1)",
    postgres="SELECT pg_notify('imageforge_task_changes', $1)",
    sqlite="SELECT ?1",
)
