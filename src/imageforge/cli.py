"""The `imageforge` command line: serve, worker, keys, db."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from imageforge.billing import format_amount, parse_amount
from imageforge.errors import ImageforgeError
from imageforge.ids import KeyId
from imageforge.keyring import create_api_key
from imageforge.settings import Settings
from imageforge.store import ApiKeyRecord, Store, open_store, upgrade_database
from imageforge.store.base import UsageRow
from imageforge.wire import key_created_body, key_info_body, usage_body

app = typer.Typer(
    name="imageforge",
    help="A self-hosted server for the GPT Image 2 asynchronous task API.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML configuration file (default: $IMAGEFORGE_CONFIG or ./imageforge.toml).",
    ),
]


def _settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except Exception as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    # Migrations announce every step at INFO; only problems are worth a line at start-up.
    # The HTTP clients log every request at INFO: one line per upstream call on top of the
    # task's own, with the upstream's URL in it.
    for name in ("alembic", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"):
        logging.getLogger(name).setLevel(quiet)


async def _with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade_database, settings.resolved_database_url)
    store = await open_store(settings.resolved_database_url)
    try:
        return await action(store)
    finally:
        await store.close()


# serve / worker ---------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; run `imageforge worker` elsewhere.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Start the API server (and, by default, a worker in the same process)."""
    import uvicorn

    from imageforge.api.app import create_app

    settings = _settings(config)
    _configure_logging(settings.log_level)
    asyncio.run(_announce_first_key(settings, host, port))
    uvicorn_config = uvicorn.Config(
        # The one place the garbage collector is tuned: this process serves and nothing else.
        create_app(settings, run_worker=not no_worker, tune_gc=True),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        log_level=settings.log_level,
        # The app applies `trusted_proxies` itself; uvicorn's FORWARDED_ALLOW_IPS is not read.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = uvicorn.Server(uvicorn_config)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found installed. A no-op handler here turns a completed drain into exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise typer.Exit(1)


async def _announce_first_key(settings: Settings, host: str, port: int) -> None:
    """On a server with no keys at all, create one and show how to use it."""

    async def ensure_key(store: Store) -> str | None:
        if await store.list_keys():
            return None
        _, secret = await create_api_key(store, "default")
        return secret

    secret = await _with_store(settings, ensure_key)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown_host}:{port}"
    if secret is None:
        console.print(
            f"imageforge: serving on {base} (data in {settings.data_dir}); "
            "create an API key with: imageforge keys create --name NAME"
        )
        return
    body = '{"model": "gpt-image-2", "prompt": "A serene mountain lake at sunset"}'
    # Plain prints, not a rich panel: a panel wraps or cuts long lines, and these are
    # meant to be copied and pasted whole.
    lines = [
        "",
        "imageforge is ready. An API key was created for you (shown once, store it now):",
        "",
        f"  {secret}",
        "",
        "Create an image:",
        "",
        f"  curl -s {base}/v1/image2/images \\",
        f'    -H "Authorization: Bearer {secret}" \\',
        '    -H "Content-Type: application/json" \\',
        f"    -d '{body}'",
        "",
        "Then poll it with the id you got until its status is completed:",
        "",
        f'  curl -s {base}/v1/result/IMAGE_ID -H "Authorization: Bearer {secret}"',
        "",
        f"API reference: {base}/docs",
        "",
    ]
    print("\n".join(lines), flush=True)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once (default: settings).")
    ] = None,
    config: ConfigOption = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Worker processes to run, each on one core (PostgreSQL only).",
        ),
    ] = 1,
) -> None:
    """Run a worker without the API: claim and generate queued tasks until SIGTERM."""
    from imageforge.runtime import Runtime

    settings = _settings(config)
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    _configure_logging(settings.log_level)
    if processes > 1:
        if settings.resolved_database_url.startswith("sqlite"):
            err_console.print(
                "[red]--processes needs PostgreSQL:[/red] SQLite has a single writer, and a "
                "worker waiting for the write lock stalls its event loop. Set "
                "IMAGEFORGE_DATABASE_URL to a PostgreSQL database, or run one process."
            )
            raise typer.Exit(2)
        from imageforge.supervisor import Supervisor

        command = [sys.executable, "-m", "imageforge", "worker"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        if config is not None:
            command += ["--config", str(config)]
        raise typer.Exit(Supervisor(command, processes).run())

    async def run() -> None:
        import uvloop  # noqa: F401  (imported to fail early if missing)

        runtime = await Runtime.start(settings, run_api=False, run_worker=True, tune_gc=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("imageforge").info(
            "worker %s started", runtime.runner and runtime.runner.worker_id
        )
        await stop.wait()
        logging.getLogger("imageforge").info("draining")
        await runtime.stop()

    import uvloop

    uvloop.run(run())


# keys ---------------------------------------------------------------------------


def _format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _amount(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_amount(value, what=option)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _balance_text(balance: int | None, currency: str) -> str:
    return "unlimited" if balance is None else format_amount(balance, currency)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the key.")],
    credits: Annotated[
        str | None,
        typer.Option(help="Starting credits in currency units, e.g. 12.50 (default: unlimited)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on the last line.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create an API key; its secret is shown once."""
    name = name.strip()
    if not name or len(name) > 200:
        err_console.print("[red]--name must be 1 to 200 characters[/red]")
        raise typer.Exit(2)
    balance = _amount(credits, "--credits")
    settings = _settings(config)

    async def create(store: Store) -> tuple[ApiKeyRecord, str]:
        return await create_api_key(store, name, balance_micros=balance)

    record, secret = asyncio.run(_with_store(settings, create))
    if as_json:
        print(json.dumps(key_created_body(record, secret)))
        return
    console.print(
        f"Created API key [bold]{record.id}[/bold] ({name}, credits: "
        f"{_balance_text(balance, settings.currency)}). Store the secret now:"
    )
    print(secret)


@keys_app.command("credit")
def keys_credit(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    add: Annotated[str | None, typer.Option(help="Add this many currency units.")] = None,
    set_to: Annotated[str | None, typer.Option("--set", help="Set the balance to this.")] = None,
    unlimited: Annotated[bool, typer.Option(help="Remove the limit.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add to or set a key's credits (every change is written to the ledger)."""
    if (add is not None) + (set_to is not None) + unlimited != 1:
        err_console.print("[red]give exactly one of --add, --set, --unlimited[/red]")
        raise typer.Exit(2)
    add_micros = _amount(add, "--add")
    set_micros = _amount(set_to, "--set")
    settings = _settings(config)

    async def adjust(store: Store) -> ApiKeyRecord:
        return await store.adjust_balance(
            KeyId(key_id),
            add_micros=add_micros,
            set_micros=set_micros,
            unlimited=unlimited,
            note="keys credit",
            now=time.time(),
        )

    try:
        record = asyncio.run(_with_store(settings, adjust))
    except ImageforgeError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{record.id}: balance {_balance_text(record.balance_micros, settings.currency)}")


@keys_app.command("usage")
def keys_usage(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    days: Annotated[int, typer.Option(min=1, max=366, help="Days to report.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """A key's balance, spend and task counts by model and day."""
    settings = _settings(config)

    async def report(store: Store) -> tuple[ApiKeyRecord | None, list[UsageRow]]:
        key = await store.get_key(KeyId(key_id))
        rows = await store.usage(KeyId(key_id), since=time.time() - days * 86_400)
        return key, rows

    key, rows = asyncio.run(_with_store(settings, report))
    if key is None:
        err_console.print(f"[red]no key with id {key_id}[/red]")
        raise typer.Exit(1)
    currency = settings.currency
    if as_json:
        print(json.dumps(usage_body(key, currency, rows)))
        return
    console.print(
        f"{key.id} ({key.name}): balance {_balance_text(key.balance_micros, currency)}, "
        f"spend {format_amount(sum(r.spend_micros for r in rows), currency)} in {days} days"
    )
    table = Table("day", "model", "tasks", "completed", "failed", "unfinished", "spend")
    for r in rows:
        table.add_row(
            r.day,
            r.model,
            str(r.tasks),
            str(r.completed),
            str(r.failed),
            str(r.unfinished),
            format_amount(r.spend_micros, currency),
        )
    console.print(table)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List API keys (never their secrets)."""
    settings = _settings(config)
    records = asyncio.run(_with_store(settings, lambda store: store.list_keys()))
    if as_json:
        print(json.dumps([key_info_body(record) for record in records]))
        return
    table = Table("id", "name", "key", "credits", "created", "revoked")
    for r in records:
        table.add_row(
            r.id,
            r.name,
            r.hint,
            _balance_text(r.balance_micros, settings.currency),
            _format_time(r.created_at),
            _format_time(r.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key; requests with it get 401 within a second."""
    settings = _settings(config)
    revoked = asyncio.run(
        _with_store(settings, lambda store: store.revoke_key(KeyId(key_id), now=time.time()))
    )
    if not revoked:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")


# db -----------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations (the server also does this at start-up)."""
    settings = _settings(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    console.print("Database is up to date.")


def main() -> None:
    app()
