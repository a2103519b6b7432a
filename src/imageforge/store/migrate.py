"""Apply Alembic migrations: at start-up and from `imageforge db upgrade`."""

from __future__ import annotations

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from imageforge.store.urls import migration_url

_MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    # Alembic's ini interpolation treats % specially (URL-encoded passwords).
    # Any spelling of a PostgreSQL URL becomes postgresql+asyncpg:// for the async engine;
    # concurrent upgrades there are serialised by an advisory lock (see migrations/env.py).
    config.set_main_option("sqlalchemy.url", migration_url(database_url).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration this version ships (what `/readyz` expects the schema at)."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    return ",".join(sorted(heads))


def upgrade_database(database_url: str) -> None:
    """Bring the schema to the newest revision. Blocking: call it from a thread or
    before the event loop starts (Alembic's environment runs its own loop)."""
    url = make_url(database_url)
    config = alembic_config(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        # Several processes starting at once on one SQLite file would race the
        # version table; an exclusive file lock serialises them.
        lock_path = Path(url.database).with_suffix(".migrate.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            command.upgrade(config, "head")
        return
    command.upgrade(config, "head")
