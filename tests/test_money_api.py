"""Credits, charges, refunds, idempotent creates, quotes, usage and limits over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imageforge.ids import KeyId
from imageforge.keyring import create_api_key
from imageforge.store import Store
from tests.conftest import ApiHarness, make_settings, start_harness
from tests.ledger import ledger_entries


async def harness_for(tmp_path: Path, *, run_worker: bool = True, **overrides: Any) -> Any:
    return await start_harness(make_settings(tmp_path / "data", **overrides), run_worker=run_worker)


@pytest.fixture
async def queued_api(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    """No worker: tasks stay queued, so only acceptance is under test."""
    lifespan, harness = await harness_for(tmp_path, run_worker=False)
    try:
        yield harness
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def limited_key(api: ApiHarness, micros: int) -> tuple[KeyId, str]:
    record, secret = await create_api_key(api.runtime.store, "limited", balance_micros=micros)
    return record.id, secret


async def balance_of(store: Store, key_id: KeyId) -> int | None:
    key = await store.get_key(key_id)
    assert key is not None
    return key.balance_micros


async def test_charges_until_the_balance_runs_out_then_402(queued_api: ApiHarness) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 20_000)  # three low-quality images and change
    for _ in range(3):
        response = await api.create(secret, quality="low")
        assert response.status_code == 200 and response.json()["amount"] == 0.006
    refused = await api.create(secret, quality="low")
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "0.006 USD" in error["message"] and "0.002 USD" in error["message"]
    assert await balance_of(api.runtime.store, key_id) == 2_000
    ledger = await ledger_entries(api.runtime.settings.resolved_database_url, key_id)
    assert [e.kind for e in ledger] == ["credit", "charge", "charge", "charge"]
    assert sum(e.amount_micros for e in ledger) == 2_000


async def test_racing_creates_never_overdraw(queued_api: ApiHarness) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 50 * 6_000)
    responses = await asyncio.gather(*(api.create(secret, prompt=f"r{i}") for i in range(200)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 50 and statuses.count(402) == 150
    assert await balance_of(api.runtime.store, key_id) == 0
    ledger = await ledger_entries(api.runtime.settings.resolved_database_url, key_id)
    assert sum(e.amount_micros for e in ledger) == 0
    assert len([e for e in ledger if e.kind == "charge"]) == 50


async def test_a_failed_task_is_refunded_exactly_once(tmp_path: Path) -> None:
    lifespan, api = await harness_for(tmp_path)
    try:
        key_id, secret = await limited_key(api, 1_000_000)
        response = await api.create(
            secret, quality="high", image_urls=["http://127.0.0.2:9/never.png"]
        )
        created = response.json()
        assert response.status_code == 200
        assert (created["amount"], created["refunded"]) == (0.211, False)
        result = await api.wait_terminal(secret, created["id"])
        # What the task costs the key once refunded: nothing, and the poll says why.
        assert (result["status"], result["amount"], result["refunded"]) == ("failed", 0, True)
        assert await balance_of(api.runtime.store, key_id) == 1_000_000
        completed = await api.create(secret, quality="high")
        done = await api.wait_terminal(secret, completed.json()["id"])
        assert (done["status"], done["amount"], done["refunded"]) == ("completed", 0.211, False)
        kinds = [
            e.kind for e in await ledger_entries(api.runtime.settings.resolved_database_url, key_id)
        ]
        assert kinds == ["credit", "charge", "refund", "charge"]
        usage = (
            await api.client.get("/v1/usage", headers={"Authorization": f"Bearer {secret}"})
        ).json()
        # Usage agrees with the polls: spend is the sum of the tasks' amounts.
        assert usage["spend"] == result["amount"] + done["amount"] == 0.211
        assert usage["balance"] == 1 - 0.211
        assert usage["days"][0]["failed"] == 1 and usage["days"][0]["completed"] == 1
        # And it says what came back, in the same currency units as the task's amount.
        assert usage["refunded"] == usage["days"][0]["refunded"] == created["amount"] == 0.211
        assert usage["days"][0]["refunds"] == 1
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_idempotent_retries_return_the_original_task_and_charge_once(
    queued_api: ApiHarness,
) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 1_000_000)
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "order-42"}
    body = {"model": "gpt-image-2", "prompt": "same", "quality": "medium"}
    first = await api.client.post("/v1/image2/images", json=body, headers=headers)
    again = await api.client.post(
        "/v1/image2/images", json={**body, "ignored_extra": 1}, headers=headers
    )
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert await balance_of(api.runtime.store, key_id) == 1_000_000 - 53_000
    other = await api.client.post(
        "/v1/image2/images", json={**body, "prompt": "different"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["param"] == "Idempotency-Key"
    # Scoped per API key: another key may use the same Idempotency-Key.
    _, second_secret = await limited_key(api, 1_000_000)
    separate = await api.client.post(
        "/v1/image2/images",
        json=body,
        headers={"Authorization": f"Bearer {second_secret}", "Idempotency-Key": "order-42"},
    )
    assert separate.status_code == 200 and separate.json()["id"] != first.json()["id"]


async def test_parallel_creates_with_one_idempotency_key_make_one_task(
    queued_api: ApiHarness,
) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 10_000_000)
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "burst"}
    body = {"model": "gpt-image-2", "prompt": "burst"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/image2/images", json=body, headers=headers) for _ in range(100))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    charges = [
        e
        for e in await ledger_entries(api.runtime.settings.resolved_database_url, key_id)
        if e.kind == "charge"
    ]
    assert len(charges) == 1
    assert await balance_of(api.runtime.store, key_id) == 10_000_000 - 6_000


async def test_bad_idempotency_keys_and_validation_failures_store_nothing(
    queued_api: ApiHarness,
) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 1_000_000)
    auth = {"Authorization": f"Bearer {secret}"}
    bad = await api.client.post(
        "/v1/image2/images",
        json={"model": "gpt-image-2", "prompt": "x"},
        headers={**auth, "Idempotency-Key": "x" * 256},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"
    invalid = await api.client.post(
        "/v1/image2/images",
        json={"model": "gpt-image-2", "prompt": "x", "size": "10x10"},
        headers={**auth, "Idempotency-Key": "k1"},
    )
    assert invalid.status_code == 400
    fixed = await api.client.post(
        "/v1/image2/images",
        json={"model": "gpt-image-2", "prompt": "x"},
        headers={**auth, "Idempotency-Key": "k1"},
    )
    assert fixed.status_code == 200 and "idempotent-replayed" not in fixed.headers
    assert await balance_of(api.runtime.store, key_id) == 1_000_000 - 6_000


async def test_quote_prices_without_creating(queued_api: ApiHarness) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 1_000)
    auth = {"Authorization": f"Bearer {secret}"}
    quote = await api.client.post(
        "/v1/image2/images/quote",
        json={
            "model": "gpt-image-2",
            "prompt": "x",
            "ratio": "16:9",
            "resolution": "4k",
            "quality": "high",
        },
        headers=auth,
    )
    assert quote.status_code == 200
    assert quote.json() == {
        "object": "image.quote",
        "model": "gpt-image-2",
        "size": "3840x2160",
        "width": 3840,
        "height": 2160,
        "quality": "high",
        "resolution": "4k",
        "billing_tier": "high",
        "amount": 0.211,
        "currency": "USD",
    }
    r_quote = await api.client.post(
        "/v1/image2/images/quote",
        json={"model": "gpt-image-2-r", "prompt": "x", "quality": "high"},
        headers=auth,
    )
    assert r_quote.json()["amount"] == 0.005 and r_quote.json()["quality"] is None
    bad = await api.client.post(
        "/v1/image2/images/quote", json={"model": "gpt-image-2", "prompt": ""}, headers=auth
    )
    assert bad.status_code == 400
    assert await balance_of(api.runtime.store, key_id) == 1_000
    assert (await api.client.post("/v1/image2/images/quote", json={})).status_code == 401


async def test_usage_reports_balance_spend_and_counts(queued_api: ApiHarness) -> None:
    api = queued_api
    key_id, secret = await limited_key(api, 1_000_000)
    await api.create(secret, quality="medium")
    await api.create(secret, model="gpt-image-2-r")
    usage = (
        await api.client.get("/v1/usage", headers={"Authorization": f"Bearer {secret}"})
    ).json()
    assert usage["key_id"] == key_id
    assert usage["balance"] == 0.942
    assert usage["spend"] == 0.058
    assert usage["tasks"] == 2
    assert {(d["model"], d["unfinished"], d["spend"]) for d in usage["days"]} == {
        ("gpt-image-2", 1, 0.053),
        ("gpt-image-2-r", 1, 0.005),
    }
    unlimited = await api.new_key("unlimited")
    body = (
        await api.client.get("/v1/usage", headers={"Authorization": f"Bearer {unlimited}"})
    ).json()
    assert body["balance"] is None and body["tasks"] == 0


async def test_requests_per_minute_limit(tmp_path: Path) -> None:
    lifespan, api = await harness_for(tmp_path, run_worker=False, rate_limit_per_minute=5)
    try:
        secret = await api.new_key()
        statuses = [(await api.create(secret)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        limited = await api.create(secret)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["type"] == "rate_limit_error"
        other = await api.new_key("other")
        assert (await api.create(other)).status_code == 200
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_unfinished_task_quota(tmp_path: Path) -> None:
    lifespan, api = await harness_for(tmp_path, run_worker=False, max_unfinished_tasks=2)
    try:
        key_id, secret = await limited_key(api, 1_000_000)
        assert [(await api.create(secret)).status_code for _ in range(2)] == [200, 200]
        refused = await api.create(secret)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_unfinished_tasks"
        assert "retry-after" in refused.headers
        assert await balance_of(api.runtime.store, key_id) == 1_000_000 - 2 * 6_000
    finally:
        await api.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_rescuer_failure_refunds(queued_api: ApiHarness) -> None:
    api = queued_api
    store = api.runtime.store
    key_id, secret = await limited_key(api, 100_000)
    created = (await api.create(secret)).json()
    for attempt in range(1, 4):
        claimed = await store.claim(worker_id="gone", limit=1, lease_seconds=0.05)
        assert [t.attempt for t in claimed] == [attempt]
        await asyncio.sleep(0.1)  # the lease runs out
        report = await store.rescue_expired()
    assert report.failed == (created["id"],)
    assert await balance_of(store, key_id) == 100_000
    ledger = await ledger_entries(api.runtime.settings.resolved_database_url, key_id)
    assert [e.kind for e in ledger] == ["credit", "charge", "refund"]


def _redis_reachable() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _redis_reachable(), reason="Redis not reachable on 127.0.0.1:6379")
async def test_rate_limit_is_shared_between_nodes_through_redis(tmp_path: Path) -> None:
    import uuid

    # Two API nodes on one database and one Redis: together they allow 6 a minute.
    redis_url = "redis://127.0.0.1:6379/15"
    first_lifespan, first = await harness_for(
        tmp_path, run_worker=False, rate_limit_per_minute=6, redis_url=redis_url
    )
    second_lifespan, second = await start_harness(
        make_settings(tmp_path / "data", rate_limit_per_minute=6, redis_url=redis_url),
        run_worker=False,
    )
    try:
        secret = await first.new_key(f"shared-{uuid.uuid4().hex[:8]}")
        await second.runtime.keyring.refresh()
        statuses = []
        for i in range(8):
            node = first if i % 2 == 0 else second
            statuses.append((await node.create(secret)).status_code)
        assert statuses.count(200) == 6 and statuses.count(429) == 2
    finally:
        for harness, lifespan in ((first, first_lifespan), (second, second_lifespan)):
            await harness.client.aclose()
            await lifespan.__aexit__(None, None, None)
