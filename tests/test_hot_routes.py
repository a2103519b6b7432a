"""The poll and create routes answered ahead of the router (`api/hot.py`): what a request
log sees of them, what stays FastAPI's, and errors through the one error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from imageforge.api.app import create_app
from imageforge.keyring import create_api_key
from imageforge.settings import Settings


class RecordState:
    """An outer middleware, as a request log would be: keeps each request's state."""

    seen: list[dict[str, Any]]

    def __init__(self, app: ASGIApp, seen: list[dict[str, Any]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.seen.append(dict(scope.get("state", {})))


@pytest.fixture
async def recorded(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any, list]]:
    seen: list[dict[str, Any]] = []
    app = create_app(settings, run_worker=False)
    app.add_middleware(RecordState, seen=seen)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, app, seen


async def test_the_hot_routes_name_route_key_and_task_for_the_request_log(
    recorded: tuple[httpx.AsyncClient, Any, list[dict[str, Any]]],
) -> None:
    client, app, seen = recorded
    record, secret = await create_api_key(app.state.runtime.store, "log")
    headers = {"Authorization": f"Bearer {secret}"}
    created = await client.post(
        "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "a fox"}, headers=headers
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["id"]
    polled = await client.get(f"/v1/result/{task_id}", headers=headers)
    assert polled.status_code == 200
    unknown = await client.get("/v1/result/image_nope", headers=headers)
    assert unknown.status_code == 404
    refused = await client.get(f"/v1/result/{task_id}")
    assert refused.status_code == 401

    # The request log's middleware adds its request id to each.
    assert all(state.pop("request_id") for state in seen)
    assert seen[0] == {
        "route": "/v1/image2/images",
        "key_id": record.id,
        "task_id": task_id,
        "prompt": "a fox",
    }
    assert seen[1] == {"route": "/v1/result/{task_id}", "key_id": record.id, "task_id": task_id}
    assert seen[2] == {
        "route": "/v1/result/{task_id}",
        "key_id": record.id,
        "task_id": "image_nope",
    }
    # No key: the route and the id asked for, no key id.
    assert seen[3] == {"route": "/v1/result/{task_id}", "task_id": task_id}


async def test_answers_carry_the_headers_a_response_object_would(
    recorded: tuple[httpx.AsyncClient, Any, list[dict[str, Any]]],
) -> None:
    client, app, _ = recorded
    _, secret = await create_api_key(app.state.runtime.store, "headers")
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "once"}
    body = {"model": "gpt-image-2", "prompt": "a fox"}
    first = await client.post("/v1/image2/images", json=body, headers=headers)
    again = await client.post("/v1/image2/images", json=body, headers=headers)
    polled = await client.get(f"/v1/result/{first.json()['id']}", headers=headers)
    # The request log's middleware appends the request id to every answer.
    answers = [first, again, polled]
    assert all(answer.headers["x-request-id"] for answer in answers)
    first_headers, again_headers, polled_headers = (
        [item for item in answer.headers.items() if item[0] != "x-request-id"] for answer in answers
    )
    assert first_headers == [
        ("content-length", str(len(first.content))),
        ("content-type", "application/json"),
    ]
    assert again_headers == [
        ("idempotent-replayed", "true"),
        ("content-length", str(len(again.content))),
        ("content-type", "application/json"),
    ]
    assert polled_headers == [
        ("content-length", str(len(polled.content))),
        ("content-type", "application/json"),
    ]


async def test_other_methods_and_paths_stay_the_routers(
    recorded: tuple[httpx.AsyncClient, Any, list[dict[str, Any]]],
) -> None:
    client, _, seen = recorded
    head = await client.head("/v1/result/image_x")
    assert head.status_code == 405
    assert head.headers["allow"] == "GET"
    listed = await client.get("/v1/image2/images")
    assert listed.status_code == 405
    assert listed.headers["allow"] == "POST"
    assert listed.json()["error"]["code"] == "method_not_allowed"
    nested = await client.get("/v1/result/image_x/more")
    assert nested.status_code == 404
    assert all(state.get("route") is None for state in seen)


async def test_an_unexpected_error_is_the_apps_500(
    recorded: tuple[httpx.AsyncClient, Any, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, app, _ = recorded
    _, secret = await create_api_key(app.state.runtime.store, "boom")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.runtime.service, "get", broken)
    answer = await client.get("/v1/result/image_x", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
