"""The admin API: every action audited, and invisible to anyone without an admin key."""

from __future__ import annotations

import httpx

from imageforge.keyring import create_api_key
from tests.conftest import ApiHarness

ADMIN_ROUTES = [
    ("GET", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys"),
    ("POST", "/v1/admin/keys/key_x/revoke"),
    ("POST", "/v1/admin/keys/key_x/credits"),
    ("GET", "/v1/admin/keys/key_x/usage"),
    ("GET", "/v1/admin/tasks/image_x"),
    ("GET", "/v1/admin/audit"),
    # Wrong methods and unknown admin paths: a 405 or a different 404 would tell.
    ("DELETE", "/v1/admin/keys"),
    ("POST", "/v1/admin/audit"),
    ("GET", "/v1/admin/nothing/here"),
]


async def admin_key(api: ApiHarness, *, task_api: bool = False) -> tuple[str, str]:
    record, secret = await create_api_key(api.runtime.store, "ops", admin=True, task_api=task_api)
    return record.id, secret


def same_answer(first: httpx.Response, second: httpx.Response) -> bool:
    def headers(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k != "x-request-id"}

    return (first.status_code, first.content, headers(first)) == (
        second.status_code,
        second.content,
        headers(second),
    )


async def test_without_an_admin_key_admin_routes_look_unknown(api: ApiHarness, key: str) -> None:
    unknown = await api.client.get("/v1/no-such-route")
    assert unknown.status_code == 404
    for authorization in (None, "Bearer ifk_not_a_key", f"Bearer {key}", "Basic abc"):
        headers = {"Authorization": authorization} if authorization else {}
        for method, path in ADMIN_ROUTES:
            answer = await api.client.request(
                method, path, headers=headers, json={"name": "x", "action": "add"}
            )
            assert same_answer(answer, unknown), (method, path, authorization, answer.text)
    schema = (await api.client.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith("/v1/admin")]


async def test_an_admin_only_key_cannot_use_the_task_api(api: ApiHarness) -> None:
    _, secret = await admin_key(api)
    created = await api.create(secret)
    assert created.status_code == 403
    assert created.json()["error"]["code"] == "admin_only_key"
    assert (await api.poll(secret, "image_x")).status_code == 403
    _, both = await admin_key(api, task_api=True)
    assert (await api.create(both)).status_code == 200
    listed = await api.client.get("/v1/admin/keys", headers={"Authorization": f"Bearer {both}"})
    assert listed.status_code == 200


async def test_admin_actions_and_their_audit(api: ApiHarness, key: str) -> None:
    admin_id, secret = await admin_key(api)
    headers = {"Authorization": f"Bearer {secret}", "X-Request-Id": "ops-1"}

    async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        return await api.client.request(method, f"/v1/admin{path}", headers=headers, **kwargs)  # type: ignore[arg-type]

    created = await call("POST", "/keys", json={"name": "team a", "credits": "5.00"})
    assert created.status_code == 200, created.text
    team = created.json()
    assert team["key"].startswith("ifk_") and team["balance"] == 5.0
    assert team["admin"] is False and team["task_api"] is True
    # The new key works on the task API at once.
    task = await api.create(team["key"])
    assert task.status_code == 200
    task_id = task.json()["id"]

    listed = (await call("GET", "/keys")).json()["data"]
    assert {entry["id"] for entry in listed} >= {team["id"], admin_id}
    assert all("key" not in entry for entry in listed)  # never a secret

    added = await call("POST", f"/keys/{team['id']}/credits", json={"action": "add", "amount": 2})
    assert added.status_code == 200, added.text
    assert added.json()["balance"] == 7.0 - task.json()["amount"]
    set_to = await call("POST", f"/keys/{team['id']}/credits", json={"action": "set", "amount": 1})
    assert set_to.json()["balance"] == 1.0
    unlimited = await call("POST", f"/keys/{team['id']}/credits", json={"action": "unlimited"})
    assert unlimited.json()["balance"] is None
    bad = await call("POST", f"/keys/{team['id']}/credits", json={"action": "add"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "amount"
    missing = await call("POST", "/keys/key_nope/credits", json={"action": "unlimited"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"

    usage = (await call("GET", f"/keys/{team['id']}/usage", params={"days": 7})).json()
    assert usage["key_id"] == team["id"] and usage["tasks"] == 1

    seen = (await call("GET", f"/tasks/{task_id}")).json()
    assert seen["key_id"] == team["id"] and seen["prompt"] == "a red fox in the snow"
    assert (await call("GET", "/tasks/image_nope")).status_code == 404

    revoked = await call("POST", f"/keys/{team['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    again = await call("POST", f"/keys/{team['id']}/revoke")
    assert again.status_code == 400

    audit = (await call("GET", "/audit", params={"limit": 50})).json()["data"]
    actions = [(entry["action"], entry["target"]) for entry in reversed(audit)]
    assert actions == [
        ("keys.create", team["id"]),
        ("keys.list", None),
        ("keys.credits", team["id"]),
        ("keys.credits", team["id"]),
        ("keys.credits", team["id"]),
        ("keys.usage", team["id"]),
        ("tasks.get", task_id),
        ("keys.revoke", team["id"]),
    ]
    assert {entry["actor"] for entry in audit} == {admin_id}
    assert {entry["request_id"] for entry in audit} == {"ops-1"}
    assert audit[-1]["details"]["balance_micros"] == 5_000_000
    assert team["key"] not in str(audit)
    # Pages: older than an id; the listing itself is audited too.
    older = (await call("GET", "/audit", params={"before": audit[0]["id"], "limit": 2})).json()
    assert [e["id"] for e in older["data"]] == [audit[1]["id"], audit[2]["id"]]
    latest = (await call("GET", "/audit", params={"limit": 1})).json()["data"][0]
    assert latest["action"] == "audit.list"
