"""The PostgreSQL store's own statements: where one statement does what SQLite does
in several (charge + ledger + insert + wake-up; claim; fail + refund; rescue).

`{now}` is the store's clock, as in statements.py: the database's unless the store
was given one.
"""

from __future__ import annotations

from imageforge.store import statements as sql
from imageforge.store.rows import TASK_COLUMN_NAMES, TASK_COLUMNS
from imageforge.store.wakeups import CHANGES_CHANNEL, CHANNEL

# In UPDATE … FROM picked, `id` alone would be ambiguous.
_RETURNING_COLUMNS = ", ".join(f"t.{name}" for name in TASK_COLUMN_NAMES)
# $n of each task column in the insert statements; $30 is the store's clock. A new task
# is claimable at once on the database's clock, even from an API node whose clock runs
# ahead: its run_after is stored as the earlier of its own and the database's now.
_P = {name: f"${n}" for n, name in enumerate(TASK_COLUMN_NAMES, start=1)}
_NOW = sql.postgres_now(f"${len(TASK_COLUMN_NAMES) + 1}")
_TASK_VALUES = ", ".join(
    f"least({p}, {_NOW})" if name == "run_after" else p for name, p in _P.items()
)

NOTIFY = f"pg_notify('{CHANNEL}', '')"
#: Task ids that changed, comma-separated (`wakeups.change_payloads`), to every node.
ANNOUNCE_CHANGES = f"SELECT pg_notify('{CHANGES_CHANNEL}', $1)"


# Transitions do not NOTIFY their task's change either (see the inserts below): the store
# announces changes after the commit, many in one notification (`PostgresStore._announce`).


# A terminal transition queues the task's webhook in its own statement: the outbox row
# commits with the transition or not at all.
_OUTBOX_FROM_ENDED = f"outbox AS ({sql.outbox_insert('ended')})"

# The inserts do not NOTIFY: PostgreSQL serialises the commits of transactions that
# notified (one global lock on the notification queue, held through the commit's WAL
# flush), which capped creates at one commit at a time (64 clients: ~0.6-0.85k creates/s
# with it, ~1.9k without). The store notifies after the commit instead (`_wake_workers`).
INSERT_TASK = (
    f"WITH changed AS (INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({_TASK_VALUES}) "
    "RETURNING run_after) SELECT run_after FROM changed"
)
# A priced task: charge the key (only if its balance covers the price), book the
# charge and insert the task, in one statement. No row comes back when the balance is
# short, and then nothing was written. An unlimited key (NULL balance) is not updated
# at all: that UPDATE would lock its row and make every create of the key wait for the
# previous one's commit (measured: 2.6k inserts/s with it, 7.2k without, 40 clients).
# FOR KEY SHARE lets those creates run side by side while an operator's balance change
# (FOR UPDATE) still waits for them, so its ledger sum includes their charges.
CHARGE_AND_INSERT_TASK = (
    "WITH charged AS ("
    f" UPDATE api_keys SET balance_micros = balance_micros - {_P['price_micros']}"
    f" WHERE id = {_P['key_id']} AND balance_micros >= {_P['price_micros']} RETURNING id), "
    "unlimited AS ("
    f" SELECT id FROM api_keys WHERE id = {_P['key_id']} AND balance_micros IS NULL"
    " FOR KEY SHARE), "
    "payer AS (SELECT id FROM charged UNION ALL SELECT id FROM unlimited), "
    "booked AS ("
    " INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at)"
    f" SELECT {_P['key_id']}, {_P['id']}, 'charge', 0 - {_P['price_micros']}, {_P['model']},"
    f" {_P['created_at']} FROM payer), "
    f"changed AS (INSERT INTO tasks ({TASK_COLUMNS})"
    f" SELECT {_TASK_VALUES} FROM payer RETURNING run_after) "
    "SELECT run_after FROM changed"
)
# Creates of one key that enforce its unfinished-task quota take turns, so two of them
# cannot both see room for one more. (Two-key form: its own space of advisory locks.)
QUOTA_LOCK = "SELECT pg_advisory_xact_lock(4242002, hashtext($1))"
GET_TASKS = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1::text[])"
CLAIM = sql.for_postgres(
    "WITH picked AS ("
    " SELECT id FROM tasks WHERE status = 'queued' AND run_after <= {now}"
    " ORDER BY run_after, created_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "claimed AS ("
    "UPDATE tasks AS t SET status = 'processing', attempt = t.attempt + 1, "
    "lease_expires_at = {now} + $3, worker_id = $4, started_at = coalesce(t.started_at, {now}), "
    "updated_at = {now} "
    "FROM picked WHERE t.id = picked.id AND t.status = 'queued' "
    f"RETURNING {_RETURNING_COLUMNS}) "
    f"SELECT {TASK_COLUMNS} FROM claimed"
)
RENEW_LEASES = sql.for_postgres(
    "UPDATE tasks AS t SET lease_expires_at = {now} + $2 "
    "FROM unnest($3::text[], $4::int[]) AS l(id, attempt) "
    "WHERE t.id = l.id AND t.attempt = l.attempt AND t.status = 'processing' "
    "RETURNING t.id, t.cancel_requested_at IS NOT NULL"
)
COMPLETE = sql.for_postgres(
    f"WITH ended AS ({sql.COMPLETE.template}), {_OUTBOX_FROM_ENDED} SELECT id FROM ended"
)
RECORD_PROGRESS = sql.for_postgres(
    f"WITH changed AS ({sql.RECORD_PROGRESS.template}) SELECT id FROM changed"
)
REQUEUE_LATER = sql.for_postgres(f"WITH changed AS ({sql.REQUEUE.template}) SELECT id FROM changed")
# Delivery claims: `FOR UPDATE SKIP LOCKED`, so senders on many nodes never take one
# delivery twice; the claim holds it by moving its next attempt a lease ahead.
CLAIM_WEBHOOKS = sql.for_postgres(
    "WITH picked AS ("
    " SELECT task_id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= {now}"
    " ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "UPDATE webhook_deliveries AS d SET next_attempt_at = {now} + $3, updated_at = {now} "
    "FROM picked WHERE d.task_id = picked.task_id "
    "RETURNING d.task_id, d.key_id, d.callback, d.attempts"
)
# Refund the charge of tasks in `failed` (id, key_id, price_micros, model), in the
# statement that failed them. The unique (task_id, kind) index makes a second refund
# of one task impossible; the balance moves only for refunds actually booked, summed
# per key (UPDATE … FROM applies one source row per target row).
_REFUND_FAILED = (
    "refunded AS ("
    " INSERT INTO ledger (key_id, task_id, kind, amount_micros, model, created_at)"
    " SELECT key_id, id, 'refund', price_micros, model, {now} FROM failed"
    " WHERE price_micros > 0"
    " ON CONFLICT (task_id, kind) WHERE task_id IS NOT NULL DO NOTHING"
    " RETURNING key_id, amount_micros), "
    "credited AS ("
    " UPDATE api_keys AS k SET balance_micros = k.balance_micros + r.amount"
    " FROM (SELECT key_id, sum(amount_micros)::bigint AS amount FROM refunded"
    " GROUP BY key_id) AS r"
    " WHERE k.id = r.key_id AND k.balance_micros IS NOT NULL) "
)
_OUTBOX_FROM_FAILED = f"outbox AS ({sql.outbox_insert('failed')}) "
FAIL = sql.for_postgres(
    f"WITH failed AS ({sql.FAIL.template}), {_REFUND_FAILED}, {_OUTBOX_FROM_FAILED}"
    "SELECT id FROM failed"
)
REQUEUE_AND_NOTIFY = f"WITH changed AS ({sql.REQUEUE.postgres}) SELECT {NOTIFY}, id FROM changed"
RELEASE_AND_NOTIFY = f"WITH changed AS ({sql.RELEASE.postgres}) SELECT {NOTIFY}, id FROM changed"
# Each rescue is conditional on the row still being processing, at the attempt that
# was seen expiring, with the lease still expired: a completion or heartbeat that
# raced the rescuer wins. SKIP LOCKED: a row another transaction is writing right
# now (a completion, another node's rescuer) is left for the next pass.
RESCUE = sql.for_postgres(
    "WITH expired AS ("
    " SELECT id, attempt, attempt < max_attempts AS retry FROM tasks"
    " WHERE status = 'processing' AND lease_expires_at < {now}"
    " ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "requeued AS ("
    " UPDATE tasks AS t SET status = 'queued', run_after = {now}, error = $3,"
    " error_code = 'lease_expired', lease_expires_at = NULL, worker_id = NULL,"
    " updated_at = {now}"
    " FROM expired e WHERE t.id = e.id AND e.retry AND t.attempt = e.attempt"
    " AND t.status = 'processing' AND t.lease_expires_at < {now} RETURNING t.id), "
    "failed AS ("
    " UPDATE tasks AS t SET status = 'failed',"
    " error = 'generation did not finish after ' || t.attempt || ' attempts: ' || $3,"
    " error_code = 'lease_expired', lease_expires_at = NULL, finished_at = {now},"
    " updated_at = {now}"
    " FROM expired e WHERE t.id = e.id AND NOT e.retry AND t.attempt = e.attempt"
    " AND t.status = 'processing' AND t.lease_expires_at < {now}"
    " RETURNING t.id, t.key_id, t.price_micros, t.model, t.callback), "
    f"{_REFUND_FAILED}, {_OUTBOX_FROM_FAILED}"
    "SELECT true AS requeued, id FROM requeued "
    "UNION ALL SELECT false, id FROM failed"
)
