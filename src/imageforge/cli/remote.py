"""The `keys` commands against a remote server's admin API (`--url` / IMAGEFORGE_ADMIN_URL
with an admin key in IMAGEFORGE_ADMIN_KEY), instead of on the database.

The answers are turned back into the records the commands print, so that a table or
`--json` reads the same whichever way the command ran.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from imageforge.billing import parse_amount
from imageforge.ids import KeyId
from imageforge.store import ApiKeyRecord
from imageforge.store.base import UsageRow

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="IMAGEFORGE_ADMIN_URL",
        help="Call this server's admin API instead of the database (needs an admin key).",
        show_envvar=True,
    ),
]
AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="IMAGEFORGE_ADMIN_KEY",
        help="The admin key for --url (better given in the environment).",
        show_envvar=True,
        show_default=False,
    ),
]
TIMEOUT_SECONDS = 30.0


class RemoteError(Exception):
    """What the server (or the way to it) said, in one line for the operator."""


def _micros(value: float | None) -> int | None:
    return None if value is None else parse_amount(str(value))


def key_from_body(body: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=KeyId(body["id"]),
        name=body["name"],
        hint=body["hint"],
        created_at=body["created_at"],
        revoked_at=body["revoked_at"],
        balance_micros=_micros(body["balance"]),
        admin=body.get("admin", False),
        task_api=body.get("task_api", True),
        webhook_secret=body.get("webhook_secret"),
    )


def usage_rows_from_body(body: dict[str, Any]) -> list[UsageRow]:
    return [
        UsageRow(
            day=row["day"],
            model=row["model"],
            tasks=row["tasks"],
            completed=row["completed"],
            failed=row["failed"],
            unfinished=row["unfinished"],
            spend_micros=_micros(row["spend"]) or 0,
            # Servers from before the refund columns leave them out.
            refunded_micros=_micros(row.get("refunded")) or 0,
            refunds=row.get("refunds", 0),
        )
        for row in body["days"]
    ]


class RemoteAdmin:
    def __init__(self, url: str, admin_key: str, *, transport: httpx.BaseTransport | None = None):
        self._url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self._url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=TIMEOUT_SECONDS,
            transport=transport,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            response = self._client.request(method, f"/v1/admin{path}", json=json, params=params)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self._url}: {exc}") from None
        finally:
            self._client.close()
        if response.status_code == 200:
            return response.json()
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        if response.status_code == 404 and message == "Not Found":
            raise RemoteError(
                f"{self._url} answered 404 Not Found: the admin key is wrong or not an admin "
                "key (the admin API looks like an unknown route to anything else)"
            )
        raise RemoteError(f"{self._url} answered {response.status_code}: {message}")


def remote_admin(url: str | None, admin_key: str | None) -> RemoteAdmin | None:
    """The remote admin API when --url is given; exit 2 without an admin key."""
    if url is None:
        return None
    if not admin_key:
        from imageforge.cli.common import err_console

        err_console.print("[red]--url needs an admin key: set IMAGEFORGE_ADMIN_KEY[/red]")
        raise typer.Exit(2)
    return RemoteAdmin(url, admin_key)
