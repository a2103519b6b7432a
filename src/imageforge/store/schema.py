"""Table definitions: the single description of the schema that migrations follow.

Times are Unix seconds (UTC) as double precision: one representation on every
database, cheap to compare in the claim and rescue queries.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
    true,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True, comment="key_… identifier shown to operators"),
    Column("name", String(200), nullable=False, comment="operator's label for the key"),
    Column("key_hash", String(64), nullable=False, unique=True, comment="SHA-256 hex of the key"),
    Column("hint", String(40), nullable=False, comment="first and last characters, for display"),
    Column("created_at", Float, nullable=False, comment="set once, on creation"),
    Column("revoked_at", Float, nullable=True, comment="set once by `keys revoke`; then 401"),
    Column(
        "balance_micros",
        BigInteger,
        nullable=True,
        comment="credits left; null = unlimited; moved with a ledger row in one transaction",
    ),
    Column(
        "admin",
        Boolean,
        nullable=False,
        server_default=false(),
        comment="may call /v1/admin/*; set once, on creation (`keys create --admin`)",
    ),
    Column(
        "task_api",
        Boolean,
        nullable=False,
        server_default=true(),
        comment="may create and read tasks; off for an admin-only key; set once, on creation",
    ),
    Column("webhook_secret", String(100), nullable=True, comment="whsec_…: signs callbacks"),
    Column(
        "previous_webhook_secret",
        String(100),
        nullable=True,
        comment="the secret before the last rotation; still signs until the time below",
    ),
    Column("previous_webhook_secret_until", Float, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(48), primary_key=True, comment="image_ + UUID4"),
    Column("key_id", String(40), nullable=False, comment="owner; other keys get 404"),
    Column("model", String(100), nullable=False, comment="public model name as resolved"),
    Column("engine", String(100), nullable=False, comment="engine chosen when accepted"),
    Column("prompt", Text, nullable=False),
    Column("quality", String(16), nullable=True, comment="null when the model ignores quality"),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("ratio", String(8), nullable=True),
    Column("resolution", String(4), nullable=False, comment="tier of width×height"),
    Column("image_urls", Text, nullable=False, comment="JSON array of reference URLs"),
    Column("status", String(16), nullable=False, comment="moved only by named transitions"),
    Column("attempt", Integer, nullable=False, comment="claims so far; fencing token"),
    Column("max_attempts", Integer, nullable=False, comment="claims allowed before failing"),
    Column("run_after", Float, nullable=False, comment="not claimable before (retry backoff)"),
    Column("lease_expires_at", Float, nullable=True, comment="set by claim, renewed by heartbeat"),
    Column("worker_id", String(100), nullable=True, comment="holder of the current lease"),
    Column(
        "image_key",
        String(300),
        nullable=True,
        comment="storage key, set by complete; cleared when retention deleted the image",
    ),
    Column("content_type", String(50), nullable=True),
    Column("error", Text, nullable=True, comment="set by fail (final) or requeue (last error)"),
    Column("error_code", String(50), nullable=True),
    Column("usage", Text, nullable=True, comment="JSON: upstream accounting, set by complete"),
    Column("price_micros", BigInteger, nullable=False, comment="charged on accept", default=0),
    Column("upstream", String(100), nullable=True, comment="set by record_upstream/complete"),
    Column(
        "upstream_task_id", String(200), nullable=True, comment="upstream's id, set before polling"
    ),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False, comment="every transition"),
    Column("started_at", Float, nullable=True, comment="first claim"),
    Column("finished_at", Float, nullable=True, comment="complete or fail"),
    Column(
        "seq",
        BigInteger().with_variant(Integer, "sqlite"),
        Identity(),
        nullable=False,
        comment="creation order, strictly increasing: the listing's order and cursor",
    ),
    Column("progress", Integer, nullable=True, comment="0-100 while processing, if reported"),
    Column(
        "cancel_requested_at",
        Float,
        nullable=True,
        comment="a client asked to cancel while processing; the worker holding it stops",
    ),
    Column(
        "callback",
        Text,
        nullable=True,
        comment='JSON {"url", "base_url"}: where the webhook goes when the task ends',
    ),
)

# The claim query scans only queued rows, the rescuer only processing rows.
Index(
    "ix_tasks_claimable",
    tasks.c.run_after,
    tasks.c.created_at,
    sqlite_where=text("status = 'queued'"),
    postgresql_where=text("status = 'queued'"),
)
Index(
    "ix_tasks_leases",
    tasks.c.lease_expires_at,
    sqlite_where=text("status = 'processing'"),
    postgresql_where=text("status = 'processing'"),
)
Index("ix_tasks_key_created", tasks.c.key_id, tasks.c.created_at)
# Listing: a key's tasks newest first, by keyset on seq (also by status and by model).
Index("ux_tasks_seq", tasks.c.seq, unique=True)
Index("ix_tasks_key_seq", tasks.c.key_id, tasks.c.seq)
Index("ix_tasks_key_status_seq", tasks.c.key_id, tasks.c.status, tasks.c.seq)
Index("ix_tasks_key_model_seq", tasks.c.key_id, tasks.c.model, tasks.c.seq)
# The per-key quota of unfinished tasks counts only these rows.
Index(
    "ix_tasks_unfinished_by_key",
    tasks.c.key_id,
    sqlite_where=text("status IN ('queued', 'processing')"),
    postgresql_where=text("status IN ('queued', 'processing')"),
)

# Retention: finished tasks by age (rows leave the index when deleted), and the images
# still stored (rows leave it when the janitor deletes the image and forgets its key).
Index(
    "ix_tasks_finished",
    tasks.c.finished_at,
    sqlite_where=text("status IN ('completed', 'failed')"),
    postgresql_where=text("status IN ('completed', 'failed')"),
)
Index(
    "ix_tasks_images_by_finish",
    tasks.c.finished_at,
    sqlite_where=text("image_key IS NOT NULL"),
    postgresql_where=text("image_key IS NOT NULL"),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("task_id", String(48), nullable=True, comment="charge/refund: the task"),
    Column("kind", String(16), nullable=False, comment="charge | refund | credit"),
    Column(
        "amount_micros",
        BigInteger,
        nullable=False,
        comment="signed change of the balance: charge < 0, refund > 0",
    ),
    Column("model", String(100), nullable=True),
    Column("note", String(200), nullable=True),
    Column("created_at", Float, nullable=False),
    comment="append-only: every charge, refund and credit; never updated or deleted",
)
# A task is charged at most once and refunded at most once, whatever races.
Index(
    "ux_ledger_task_kind",
    ledger.c.task_id,
    ledger.c.kind,
    unique=True,
    sqlite_where=text("task_id IS NOT NULL"),
    postgresql_where=text("task_id IS NOT NULL"),
)
Index("ix_ledger_key_created", ledger.c.key_id, ledger.c.created_at)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False, comment="SHA-256 of the normalised body"),
    Column("task_id", String(48), nullable=False, comment="the task the first request created"),
    Column("created_at", Float, nullable=False, comment="kept 24 h, then pruned"),
)
Index("ix_idempotency_created", idempotency_keys.c.created_at)

rate_limit_windows = Table(
    "rate_limit_windows",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("window_start", BigInteger, primary_key=True, comment="Unix minute × 60"),
    Column("hits", Integer, nullable=False, comment="requests in that minute, every node"),
    comment="requests-per-minute counters shared by API nodes; old windows are pruned",
)

sweep_leases = Table(
    "sweep_leases",
    metadata,
    Column("name", String(40), primary_key=True, comment="which sweep, e.g. janitor"),
    Column("holder", String(100), nullable=False, comment="the node that holds the lease"),
    Column("expires_at", Float, nullable=False, comment="store's clock; free to take after"),
    comment="one row per periodic sweep: whoever holds its lease does that round",
)

admin_audit = Table(
    "admin_audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", Float, nullable=False, comment="when the action was done"),
    Column(
        "actor",
        String(100),
        nullable=False,
        comment="the admin key's id (key_…), or `cli` for the command line on the database",
    ),
    Column("action", String(50), nullable=False, comment="e.g. keys.create, keys.credits"),
    Column("target", String(100), nullable=True, comment="the key or task acted on"),
    Column(
        "details", Text, nullable=False, comment="JSON: the request's parameters, never a secret"
    ),
    Column("request_id", String(128), nullable=True, comment="the request's X-Request-Id"),
    comment="append-only: every admin action, read or write; never updated or deleted",
)


webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("task_id", String(48), primary_key=True, comment="one delivery per finished task"),
    Column("key_id", String(40), nullable=False, comment="whose secret signs it"),
    Column("callback", Text, nullable=False, comment="the task's callback JSON"),
    Column("state", String(16), nullable=False, comment="pending | delivered | failed"),
    Column("attempts", Integer, nullable=False, comment="attempts so far; fences each record"),
    Column(
        "next_attempt_at",
        Float,
        nullable=False,
        comment="store's clock; a sender's claim pushes it a lease ahead",
    ),
    Column("created_at", Float, nullable=False, comment="the terminal transition's time"),
    Column("updated_at", Float, nullable=False),
    comment="the outbox: written in the transaction that ends the task",
)
Index(
    "ix_webhook_deliveries_due",
    webhook_deliveries.c.next_attempt_at,
    sqlite_where=text("state = 'pending'"),
    postgresql_where=text("state = 'pending'"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("task_id", String(48), nullable=False),
    Column("attempt", Integer, nullable=False, comment="1, 2, …"),
    Column("at", Float, nullable=False, comment="when the attempt ended"),
    Column("status_code", Integer, nullable=True, comment="the receiver's answer, if any"),
    Column("error", Text, nullable=True, comment="why it did not count, if it did not"),
    Column("next_attempt_at", Float, nullable=True, comment="null: no more attempts"),
    comment="every delivery attempt, for GET /v1/result/{id}/deliveries",
)
Index(
    "ux_webhook_attempts_task", webhook_attempts.c.task_id, webhook_attempts.c.attempt, unique=True
)
