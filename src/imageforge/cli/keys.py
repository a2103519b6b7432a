"""`imageforge keys …`: API keys, their credits and their usage."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from imageforge.apikeys import new_webhook_secret
from imageforge.billing import format_amount, parse_amount
from imageforge.cli.common import ConfigOption, console, err_console, load_settings, with_store
from imageforge.cli.tables import print_rows
from imageforge.errors import ImageforgeError
from imageforge.ids import KeyId
from imageforge.keyring import create_api_key
from imageforge.store import ApiKeyRecord, Store
from imageforge.store.base import UsageRow
from imageforge.wire import (
    key_created_body,
    key_info_body,
    usage_body,
    webhook_secret_rotated_body,
)

app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


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


@app.command("create")
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
    settings = load_settings(config)

    async def create(store: Store) -> tuple[ApiKeyRecord, str]:
        return await create_api_key(store, name, balance_micros=balance)

    record, secret = asyncio.run(with_store(settings, create))
    if as_json:
        print(json.dumps(key_created_body(record, secret)))
        return
    console.print(
        f"Created API key [bold]{record.id}[/bold] ({name}, credits: "
        f"{_balance_text(balance, settings.currency)}). Its webhook signing secret "
        "(verifies the signatures of its callbacks; `keys rotate-webhook-secret` replaces it):"
    )
    print(record.webhook_secret)
    # The key stays the last line: scripts take it from there.
    console.print("Store the secret now:")
    print(secret)


#: How long a rotated-out webhook secret keeps signing beside the new one.
WEBHOOK_SECRET_GRACE_SECONDS = 86_400


@app.command("rotate-webhook-secret")
def keys_rotate_webhook_secret(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Give a key a new webhook signing secret; the old one keeps signing for 24 hours
    (each webhook carries both signatures meanwhile)."""
    settings = load_settings(config)
    secret = new_webhook_secret()
    rotated = asyncio.run(
        with_store(
            settings,
            lambda store: store.rotate_webhook_secret(
                KeyId(key_id), secret=secret, grace_seconds=WEBHOOK_SECRET_GRACE_SECONDS
            ),
        )
    )
    if not rotated:
        err_console.print(f"[red]no key with id {key_id}[/red]")
        raise typer.Exit(1)
    until = time.time() + WEBHOOK_SECRET_GRACE_SECONDS
    if as_json:
        print(json.dumps(webhook_secret_rotated_body(key_id, secret, previous_valid_until=until)))
        return
    console.print(
        f"New webhook secret for [bold]{key_id}[/bold]; the old one signs too until "
        f"{_format_time(until)}. Store it now:"
    )
    print(secret)


@app.command("credit")
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
    settings = load_settings(config)

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
        record = asyncio.run(with_store(settings, adjust))
    except ImageforgeError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{record.id}: balance {_balance_text(record.balance_micros, settings.currency)}")


@app.command("usage")
def keys_usage(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    days: Annotated[int, typer.Option(min=1, max=366, help="Days to report.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """A key's balance, spend and task counts by model and day."""
    settings = load_settings(config)

    async def report(store: Store) -> tuple[ApiKeyRecord | None, list[UsageRow]]:
        key = await store.get_key(KeyId(key_id))
        rows = await store.usage(KeyId(key_id), since=time.time() - days * 86_400)
        return key, rows

    key, rows = asyncio.run(with_store(settings, report))
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
    print_rows(
        ("day", "model", "tasks", "completed", "failed", "unfinished", "spend"),
        [
            (
                r.day,
                r.model,
                str(r.tasks),
                str(r.completed),
                str(r.failed),
                str(r.unfinished),
                format_amount(r.spend_micros, currency),
            )
            for r in rows
        ],
        whole=("day", "model", "spend"),
    )


@app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List API keys (never their secrets)."""
    settings = load_settings(config)
    records = asyncio.run(with_store(settings, lambda store: store.list_keys()))
    if as_json:
        print(json.dumps([key_info_body(record) for record in records]))
        return
    print_rows(
        ("id", "name", "key", "credits", "created", "revoked"),
        [
            (
                r.id,
                r.name,
                r.hint,
                _balance_text(r.balance_micros, settings.currency),
                _format_time(r.created_at),
                _format_time(r.revoked_at),
            )
            for r in records
        ],
        whole=("id", "key"),
    )


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key; requests with it get 401 within a second."""
    settings = load_settings(config)
    revoked = asyncio.run(
        with_store(settings, lambda store: store.revoke_key(KeyId(key_id), now=time.time()))
    )
    if not revoked:
        err_console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")
