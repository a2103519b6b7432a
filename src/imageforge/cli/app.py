"""The commands, assembled; and the one place a configuration error becomes exit 78.

Each group of commands lives in its own module. Whatever raises a `ConfigurationError`
(the settings, the start-up check, a store opened on a bad URL), the operator reads one
line on stderr, `imageforge: <setting>: <what is wrong>; <how to fix it>`, and the
process exits with 78 (EX_CONFIG, what service managers know as "configuration error").
"""

from __future__ import annotations

import typer

from imageforge.cli import client_commands, keys
from imageforge.cli.common import ConfigOption, console, exit_for_configuration, load_settings
from imageforge.cli.serve import serve, worker
from imageforge.errors import ConfigurationError
from imageforge.store import upgrade_database

app = typer.Typer(
    name="imageforge",
    help="A self-hosted server for the GPT Image 2 asynchronous task API.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.command()(serve)
app.command()(worker)
client_commands.register(app)
app.add_typer(keys.app, name="keys")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations (the server also does this at start-up)."""
    settings = load_settings(config)
    upgrade_database(settings.resolved_database_url)
    console.print("Database is up to date.")


def run() -> None:
    try:
        app()
    except ConfigurationError as exc:
        exit_for_configuration(exc)
