"""`imageforge keys …`: API keys, their credits and their usage."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Table

from imageforge.admin import CLI_ACTOR, Actor, AdminService
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
from imageforge.errors import ImageforgeError
from imageforge.settings import Settings
from imageforge.store import ApiKeyRecord
from imageforge.store.base import UsageRow
from imageforge.wire import key_created_body, key_info_body, usage_body

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


#: Between two columns of a table: the (blank) divider and one space of padding.
_COLUMN_GAP = 2


def _print_rows(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, whole: Sequence[str]
) -> None:
    """A table, with the `whole` columns (ids, model names: what other commands take as
    arguments) never cut or wrapped and the others wrapped between words; when even that
    does not fit the terminal, one block per row instead, so nothing is ever cut short."""
    columns = list(zip(headers, *rows, strict=True))
    widest = [max(len(cell) for cell in column) for column in columns]
    # What each column needs at least: whole values, or else its longest word.
    least = [
        width
        if column[0] in whole
        else max(len(word) for cell in column for word in cell.split() or [""])
        for column, width in zip(columns, widest, strict=True)
    ]
    room = console.width - _COLUMN_GAP * (len(headers) - 1)
    if sum(least) > room:
        label = max(len(header) for header in headers[1:])
        indent = " " * (label + 4)
        for row in rows:
            # Plain prints: rich would cut a whole value longer than the terminal.
            print(row[0])
            for header, value in zip(headers[1:], row[1:], strict=True):
                lines = textwrap.wrap(
                    value,
                    width=max(console.width, len(indent) + 20),
                    initial_indent=f"  {header:<{label}}  ",
                    subsequent_indent=indent,
                    # Ids and model names are single words: never broken.
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                print("\n".join(lines) or f"  {header}")
        return
    # Widths fixed here, so rich never squeezes a column below what it needs: what is
    # left after every column's least goes to the columns that can use it, in order.
    widths = list(least)
    spare = room - sum(widths)
    for index, width in enumerate(widest):
        grow = min(spare, width - widths[index])
        widths[index] += grow
        spare -= grow
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, width=width, no_wrap=header in whole, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


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
        f"{_balance_text(balance, currency).strip()}). Store the secret now:"
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
    _print_rows(
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
    _print_rows(
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
