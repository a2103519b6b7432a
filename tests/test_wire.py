"""The dicts the server and the CLI send are exactly the documented models' shapes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from imageforge.catalog import resolve_request
from imageforge.ids import KeyId
from imageforge.store import ApiKeyRecord
from imageforge.store.base import UsageRow, WebhookAttempt
from imageforge.tasks import TaskStatus
from imageforge.wire import (
    DeliveryList,
    ErrorResponse,
    KeyCreated,
    KeyInfo,
    QuoteResponse,
    TaskCreated,
    TaskList,
    TaskResult,
    UsageDay,
    UsageResponse,
    WebhookSecretRotated,
    delivery_list_body,
    error_body,
    key_created_body,
    key_info_body,
    quote_body,
    task_created_body,
    task_list_body,
    task_result_body,
    usage_body,
    webhook_secret_rotated_body,
)
from tests.test_store_contract import make_task

URL = "http://127.0.0.1:8000/files/2026/11/24/x.png?expires=1&signature=s"
LIMITED = ApiKeyRecord(
    id=KeyId("key_3f9a0c1d2e4b5a69"),
    name="team-a",
    hint="ifk_ab…yz",
    created_at=1774836724.5,
    revoked_at=None,
    balance_micros=12_500_000,
    webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
)
REVOKED_UNLIMITED = ApiKeyRecord(
    id=KeyId("key_00000000000000ff"),
    name="old",
    hint="ifk_cd…wx",
    created_at=1774836000.0,
    revoked_at=1774836999.25,
    balance_micros=None,
    webhook_secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
)
ROWS = [
    UsageRow("2026-11-24", "gpt-image-2", 3, 1, 1, 1, 59_000, 53_000, 1),
    UsageRow("2026-11-25", "gpt-image-2-r", 1, 1, 0, 0, 5_000, 0, 0),
]


def assert_shape(model: type[BaseModel], body: Any) -> None:
    """Every documented field and no other; strict types; and the model, reading the
    body and writing it out again, changes nothing."""
    assert set(body) == set(model.model_fields), model.__name__
    parsed = model.model_validate(body, strict=True)
    assert parsed.model_dump(mode="json") == body


@pytest.mark.parametrize("replayed", [False, True])
@pytest.mark.parametrize("price", [0, 53_000, 2_000_000])
def test_task_created(replayed: bool, price: int) -> None:
    body = task_created_body(make_task(price_micros=price), replayed=replayed)
    assert_shape(TaskCreated, body)
    assert body["status"] == "queued"


@pytest.mark.parametrize(
    ("fields", "tier", "price"),
    [
        ({"model": "gpt-image-2", "quality": "high", "ratio": "16:9"}, "high", 211_000),
        ({"model": "gpt-image-2-r", "size": "1024x1536"}, "1k", 5_000),
    ],
)
def test_quote(fields: dict[str, str], tier: str, price: int) -> None:
    resolved = resolve_request(prompt="x", **fields)
    body = quote_body(resolved, tier=tier, price_micros=price, currency="USD")
    assert_shape(QuoteResponse, body)
    assert body["size"] == f"{body['width']}x{body['height']}"


@pytest.mark.parametrize(
    ("status", "image_url", "error"),
    [
        (TaskStatus.QUEUED, None, None),
        (TaskStatus.PROCESSING, None, None),
        (TaskStatus.COMPLETED, URL, None),
        (TaskStatus.FAILED, None, "prompt rejected by policy"),
    ],
)
def test_task_result(status: TaskStatus, image_url: str | None, error: str | None) -> None:
    task = make_task(status=status, error=error, price_micros=211_000)
    body = task_result_body(task, image_url=image_url, expired=False)
    assert_shape(TaskResult, body)
    assert (body["status"], body["image_url"], body["error"]) == (status.value, image_url, error)
    assert body["expired"] is False


@pytest.mark.parametrize("status", list(TaskStatus))
def test_task_result_of_an_image_past_retention(status: TaskStatus) -> None:
    body = task_result_body(make_task(status=status), image_url=URL, expired=True)
    assert_shape(TaskResult, body)
    # Only a completed task's image can have expired; the link is never shown then.
    assert body["expired"] is (status is TaskStatus.COMPLETED)
    assert body["image_url"] is None


@pytest.mark.parametrize(
    ("status", "price", "amount", "refunded"),
    [
        (TaskStatus.QUEUED, 211_000, 0.211, False),
        (TaskStatus.PROCESSING, 211_000, 0.211, False),
        (TaskStatus.COMPLETED, 211_000, 0.211, False),
        (TaskStatus.FAILED, 211_000, 0, True),
        # A free task has nothing to give back.
        (TaskStatus.FAILED, 0, 0, False),
    ],
)
def test_amount_is_what_the_task_costs_the_key(
    status: TaskStatus, price: int, amount: float, refunded: bool
) -> None:
    body = task_result_body(
        make_task(status=status, price_micros=price), image_url=None, expired=False
    )
    assert (body["amount"], body["refunded"]) == (amount, refunded)


def test_a_create_is_never_refunded_yet() -> None:
    body = task_created_body(make_task(price_micros=53_000), replayed=False)
    assert (body["amount"], body["refunded"]) == (0.053, False)


def test_task_result_shows_a_link_or_an_error_only_in_their_state() -> None:
    # A retry left an error on a queued task; a link is never shown before completion.
    task = make_task(status=TaskStatus.QUEUED, error="upstream busy")
    body = task_result_body(task, image_url=URL, expired=False)
    assert (body["image_url"], body["error"], body["expired"]) == (None, None, False)


@pytest.mark.parametrize("param", [None, "size"])
def test_error(param: str | None) -> None:
    body = error_body("size: bad", error_type="invalid_request_error", code="x", param=param)
    assert_shape(ErrorResponse, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("key", [LIMITED, REVOKED_UNLIMITED])
@pytest.mark.parametrize("rows", [ROWS, []])
def test_usage(key: ApiKeyRecord, rows: list[UsageRow]) -> None:
    body = usage_body(key, "USD", rows)
    assert_shape(UsageResponse, body)
    for day in body["days"]:
        assert set(day) == set(UsageDay.model_fields)


def test_usage_totals() -> None:
    body = usage_body(LIMITED, "USD", ROWS)
    assert (body["balance"], body["spend"], body["tasks"]) == (12.5, 0.064, 4)


@pytest.mark.parametrize("key", [LIMITED, REVOKED_UNLIMITED])
def test_keys(key: ApiKeyRecord) -> None:
    assert_shape(KeyCreated, key_created_body(key, "ifk_secret"))
    info = key_info_body(key)
    assert_shape(KeyInfo, info)
    assert info["active"] is (key.revoked_at is None)
    assert "ifk_secret" not in str(info)


@pytest.mark.parametrize(
    ("status", "progress", "shown"),
    [
        (TaskStatus.QUEUED, None, None),
        (TaskStatus.PROCESSING, 40, 40),
        (TaskStatus.COMPLETED, 100, 100),
        (TaskStatus.FAILED, 40, None),
    ],
)
def test_progress_is_shown_except_once_failed(
    status: TaskStatus, progress: int | None, shown: int | None
) -> None:
    body = task_result_body(
        make_task(status=status, progress=progress), image_url=None, expired=False
    )
    assert_shape(TaskResult, body)
    assert body["progress"] == shown


def test_task_list() -> None:
    tasks = [task_result_body(make_task(), image_url=None, expired=False) for _ in range(2)]
    body = task_list_body(tasks, has_more=True)
    assert_shape(TaskList, body)
    assert_shape(TaskList, task_list_body([], has_more=False))


def test_deliveries_and_rotated_secret() -> None:
    attempts = [
        WebhookAttempt(1, 1774836724.5, 503, "HTTP 503: only a 2xx answer counts", 1774836730.0),
        WebhookAttempt(2, 1774836731.0, None, "timed out", None),
        WebhookAttempt(3, 1774836731.0, 200, None, None),
    ]
    assert_shape(DeliveryList, delivery_list_body(attempts))
    rotated = webhook_secret_rotated_body("key_1", "whsec_x", previous_valid_until=1.5)
    assert_shape(WebhookSecretRotated, rotated)
