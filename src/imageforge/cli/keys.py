"""`imageforge keys …`: API keys, their credits and their usage."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from imageforge.admin import CLI_ACTOR, Actor, AdminService
from imageforge.apikeys import new_webhook_secret
from imageforge.billing import format_amount, parse_amount
from imageforge.cli.common import ConfigOption, console, err_console, load_settings, with_store
from imageforge.cli.remote import (
    AdminKeyOption,
    RemoteAdmin,
    RemoteError,
    UrlOption,
    key_from_body,
    remote_admin,
    usage_rows_from_body,
)
from imageforge.cli.tables import print_rows
from imageforge.errors import ImageforgeError
from imageforge.ids import KeyId
from imageforge.settings import Settings
from imageforge.store import ApiKeyRecord
from imageforge.store.base import UsageRow
from imageforge.wire import (
    key_created_body,
    key_info_body,
    usage_body,
    webhook_secret_rotated_body,
)

T = TypeVar("T")
#: The command line acting on the database: audited as `cli`.
_CLI = Actor(CLI_ACTOR)

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


def _on_database(
    config: Path | None, action: Callable[[AdminService], Awaitable[T]]
) -> tuple[Settings, T]:
    """Run an admin action on the database (audited as `cli`); exit 1 on its error."""
    settings = load_settings(config)
    try:
        result = asyncio.run(with_store(settings, lambda store: action(AdminService(store))))
    except ImageforgeError as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    return settings, result


def _on_server(remote: RemoteAdmin, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return remote.call(method, path, **kwargs)
    except RemoteError as exc:
        # Plain print: the message may hold brackets that rich would read as markup.
        print(exc, file=sys.stderr)
        raise typer.Exit(1) from exc


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", "-n", help="A label for the key.")],
    credits: Annotated[
        str | None,
        typer.Option(help="Starting credits in currency units, e.g. 12.50 (default: unlimited)."),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: it may call the admin API only.")
    ] = False,
    task_api: Annotated[
        bool,
        typer.Option("--task-api", help="With --admin: the key may also create and read tasks."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on the last line.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """Create an API key; its secret is shown once."""
    name = name.strip()
    if not name or len(name) > 200:
        err_console.print("[red]--name must be 1 to 200 characters[/red]")
        raise typer.Exit(2)
    if task_api and not admin:
        err_console.print("[red]--task-api goes with --admin (every other key has it)[/red]")
        raise typer.Exit(2)
    balance = _amount(credits, "--credits")
    remote = remote_admin(url, admin_key)
    uses_tasks = task_api or not admin
    if remote is not None:
        answer = _on_server(
            remote,
            "POST",
            "/keys",
            json={"name": name, "credits": credits, "admin": admin, "task_api": uses_tasks},
        )
        record, secret, currency = key_from_body(answer), answer["key"], ""
    else:
        settings, (record, secret) = _on_database(
            config,
            lambda service: service.create_key(
                _CLI, name=name, balance_micros=balance, admin=admin, task_api=uses_tasks
            ),
        )
        currency = settings.currency
    if as_json:
        print(json.dumps(key_created_body(record, secret)))
        return
    kind = {(True, False): "admin key", (True, True): "admin and task-API key"}.get(
        (record.admin, record.task_api), "API key"
    )
    console.print(
        f"Created {kind} [bold]{record.id}[/bold] ({name}, credits: "
        f"{_balance_text(balance, currency).strip()})."
    )
    if record.webhook_secret is not None:
        console.print(
            "Its webhook signing secret (verifies the signatures of its callbacks; "
            "`keys rotate-webhook-secret` replaces it):"
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
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """Add to or set a key's credits (every change is written to the ledger)."""
    if (add is not None) + (set_to is not None) + unlimited != 1:
        err_console.print("[red]give exactly one of --add, --set, --unlimited[/red]")
        raise typer.Exit(2)
    add_micros = _amount(add, "--add")
    set_micros = _amount(set_to, "--set")
    remote = remote_admin(url, admin_key)
    if remote is not None:
        action = "add" if add is not None else "set" if set_to is not None else "unlimited"
        change = {"action": action, "amount": add if add is not None else set_to}
        record = key_from_body(_on_server(remote, "POST", f"/keys/{key_id}/credits", json=change))
        currency = ""
    else:
        settings, record = _on_database(
            config,
            lambda service: service.adjust_credits(
                _CLI, key_id, add_micros=add_micros, set_micros=set_micros, unlimited=unlimited
            ),
        )
        currency = settings.currency
    console.print(f"{record.id}: balance {_balance_text(record.balance_micros, currency).strip()}")


@app.command("usage")
def keys_usage(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    days: Annotated[int, typer.Option(min=1, max=366, help="Days to report.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """A key's balance, spend and task counts by model and day."""
    remote = remote_admin(url, admin_key)
    rows: list[UsageRow]
    if remote is not None:
        answer = _on_server(remote, "GET", f"/keys/{key_id}/usage", params={"days": days})
        if as_json:
            print(json.dumps(answer))
            return
        key, rows = key_from_body_usage(answer), usage_rows_from_body(answer)
        currency = answer["currency"]
    else:
        settings, (key, rows) = _on_database(
            config, lambda service: service.key_usage(_CLI, key_id, days=days)
        )
        currency = settings.currency
        if as_json:
            print(json.dumps(usage_body(key, currency, rows)))
            return
    console.print(
        f"{key.id} ({key.name}): balance {_balance_text(key.balance_micros, currency)}, "
        f"spend {format_amount(sum(r.spend_micros for r in rows), currency)} in {days} days"
    )
    print_rows(
        ("day", "model", "tasks", "completed", "failed", "unfinished", "spend", "refunded"),
        [
            (
                r.day,
                r.model,
                str(r.tasks),
                str(r.completed),
                str(r.failed),
                str(r.unfinished),
                format_amount(r.spend_micros, currency),
                format_amount(r.refunded_micros, currency),
            )
            for r in rows
        ],
        whole=("day", "model", "spend", "refunded"),
    )


def key_from_body_usage(answer: dict[str, Any]) -> ApiKeyRecord:
    """The key of a remote usage answer (its id and balance; the name is not in it)."""
    balance = answer["balance"]
    return ApiKeyRecord(
        id=answer["key_id"],
        name=answer.get("name", answer["key_id"]),
        hint="",
        created_at=0.0,
        revoked_at=None,
        balance_micros=None if balance is None else parse_amount(str(balance)),
    )


@app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """List API keys (never their secrets)."""
    remote = remote_admin(url, admin_key)
    if remote is not None:
        answer = _on_server(remote, "GET", "/keys")
        records = [key_from_body(entry) for entry in answer["data"]]
        currency = ""
    else:
        settings, records = _on_database(config, lambda service: service.list_keys(_CLI))
        currency = settings.currency
    if as_json:
        print(json.dumps([key_info_body(record) for record in records]))
        return
    print_rows(
        ("id", "name", "key", "kind", "credits", "created", "revoked"),
        [
            (
                r.id,
                r.name,
                r.hint,
                _kind(r),
                _balance_text(r.balance_micros, currency).strip(),
                _format_time(r.created_at),
                _format_time(r.revoked_at),
            )
            for r in records
        ],
        whole=("id", "key"),
    )


def _kind(record: ApiKeyRecord) -> str:
    if record.admin:
        return "admin+tasks" if record.task_api else "admin"
    return "tasks"


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    config: ConfigOption = None,
    url: UrlOption = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """Revoke an API key; requests with it get 401 within a second."""
    remote = remote_admin(url, admin_key)
    if remote is not None:
        _on_server(remote, "POST", f"/keys/{key_id}/revoke")
    else:
        _on_database(config, lambda service: service.revoke_key(_CLI, key_id))
    console.print(f"Revoked {key_id}.")
