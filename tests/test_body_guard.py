"""The body guard holds for every route, however the route reads its body: the answers
come from the guard, not from whichever parser happened to be reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from imageforge.api.app import create_app
from imageforge.keyring import create_api_key
from tests.conftest import make_settings

MAX_BODY = 2048
IDLE = 0.3


class Echo(BaseModel):
    text: str


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    """The real app (runtime started, one key in `app.state.test_key`), plus a route of
    the kind routes to come may be: FastAPI reads and parses its body."""
    app = create_app(
        make_settings(tmp_path / "data", max_body_bytes=MAX_BODY, body_timeout_seconds=IDLE),
        run_worker=False,
    )

    @app.post("/_test/echo")
    async def echo(body: Echo) -> dict[str, Any]:
        return {"text": body.text}

    async with app.router.lifespan_context(app):
        _, app.state.test_key = await create_api_key(app.state.runtime.store, "test")
        yield app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers={
            "Authorization": f"Bearer {app.state.test_key}",
            "Content-Type": "application/json",
        },
    )


async def pieces(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


@pytest.mark.parametrize("path", ["/_test/echo", "/v1/image2/images/quote"])
async def test_too_large_is_one_413_declared_or_streamed(app: FastAPI, path: str) -> None:
    big = b'{"text": "' + b"x" * MAX_BODY + b'"}'
    async with client(app) as http:
        declared = await http.post(path, content=big)
        streamed = await http.post(path, content=pieces(big[:1000], big[1000:]))
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
    assert declared.json() == streamed.json()
    assert declared.json()["error"]["param"] == "body"


async def test_a_stalled_body_is_a_408_for_a_route_fastapi_parses(app: FastAPI) -> None:
    async with client(app) as http:
        response = await http.post("/_test/echo", content=pieces(b'{"te', b'xt": "a"}', pause=1))
    assert response.status_code == 408
    assert response.json()["error"]["code"] == "request_timeout"
    assert response.json()["error"]["param"] == "body"


async def test_a_body_paced_under_the_idle_timeout_is_read(app: FastAPI) -> None:
    parts = [b'{"te', b'xt": ', b'"slow', b" but", b' steady"}']
    async with client(app) as http:
        response = await http.post("/_test/echo", content=pieces(*parts, pause=IDLE / 3))
    assert response.status_code == 200 and response.json() == {"text": "slow but steady"}


@pytest.mark.parametrize("path", ["/_test/echo", "/v1/image2/images/quote"])
async def test_a_client_gone_mid_body_is_one_info_line(
    app: FastAPI, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [
        {"type": "http.request", "body": b'{"text": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {app.state.test_key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with caplog.at_level(logging.DEBUG):
        await app(scope, receive, send)
    assert sent == []  # nobody is listening
    mine = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(mine) == 1 and mine[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
