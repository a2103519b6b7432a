"""The task API over HTTP, as a client sees it."""

from __future__ import annotations

import asyncio
import gc
import io
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imageforge.api.app import create_app
from imageforge.errors import ServiceUnavailable
from imageforge.ids import TaskId
from imageforge.runtime import GC_THRESHOLDS, Runtime
from imageforge.storage import UrlSigner
from imageforge.tasks import Task
from imageforge.testing.storage import MemoryStorage
from tests.conftest import CREATE_BODY_ROUTES, ApiHarness, make_settings, start_harness

UUID_ID = re.compile(r"^image_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def test_create_answers_at_once_with_the_contract_shape(api: ApiHarness, key: str) -> None:
    before = int(time.time())
    response = await api.create(key, prompt="A serene mountain lake at sunset")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "status",
        "error",
        "amount",
        "refunded",
    }
    assert body["amount"] == 0.006  # gpt-image-2, low quality
    assert body["refunded"] is False
    assert UUID_ID.match(body["id"])
    assert body["object"] == "image"
    assert body["model"] == "gpt-image-2"
    assert body["status"] in ("queued", "processing")
    assert body["error"] is None
    assert before <= body["created"] <= int(time.time())


async def test_task_completes_with_a_signed_image_of_the_requested_size(
    api: ApiHarness, key: str
) -> None:
    created = (await api.create(key, ratio="16:9", quality="medium")).json()
    result = await api.wait_terminal(key, created["id"])
    assert set(result) == {
        "id",
        "object",
        "created",
        "model",
        "status",
        "image_url",
        "error",
        "amount",
        "expired",
        "refunded",
        "progress",
    }
    assert result["expired"] is False
    assert result["amount"] == 0.053 and result["refunded"] is False
    assert result["object"] == "image.generation"
    assert result["status"] == "completed"
    assert result["error"] is None
    assert result["created"] == created["created"]
    url = httpx.URL(result["image_url"])
    assert url.host == "testserver" and url.path.startswith("/files/")
    image = await api.client.get(result["image_url"])  # no API key needed
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (1536, 864)


async def test_poll_of_a_queued_task_has_null_image_url(api: ApiHarness, key: str) -> None:
    created = (await api.create(key)).json()
    body = (await api.poll(key, created["id"])).json()
    if body["status"] in ("queued", "processing"):
        assert body["image_url"] is None and body["error"] is None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "dall-e-9"}, "model", "unknown model 'dall-e-9'"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": 42}, "prompt", "prompt:"),
        ({"quality": "ultra"}, "quality", "low, medium, high"),
        ({"ratio": "7:5"}, "ratio", "7:5"),
        ({"resolution": "8k", "ratio": "16:9"}, "resolution", "8k"),
        ({"resolution": "2k"}, "ratio", "required when resolution is sent"),
        ({"resolution": "4k", "ratio": "1:1"}, "resolution", "16:9, 9:16, 2:1, 1:2, 21:9, 9:21"),
        ({"size": "1000x1000"}, "size", "multiples of 16"),
        ({"size": "4096x1024"}, "size", "3840"),
        ({"size": "3072x1008"}, "size", "3 times"),
        ({"size": "512x512"}, "size", "655,360"),
        ({"size": "banana"}, "size", "banana"),
        ({"model": "gpt-image-2-r", "resolution": "2k", "ratio": "1:1"}, "resolution", "1k"),
        ({"model": "gpt-image-2-r", "size": "2048x2048"}, "size", "gpt-image-2-r"),
        ({"image_urls": ["https://example.com/a.png"] * 7}, "image_urls", "at most 6"),
        ({"image_urls": ["ftp://example.com/a.png"]}, "image_urls[0]", "http"),
        ({"image_urls": "https://example.com/a.png"}, "image_urls", "image_urls"),
        ({"image_urls": [""]}, "image_urls[0]", "http"),
        ({"image_urls": ["https://user:pass@example.com/a.png"]}, "image_urls[0]", "credentials"),
        (
            {"image_urls": ["https://example.com/a.png", "https://me@example.com/b.png"]},
            "image_urls[1]",
            "credentials",
        ),
    ],
)
@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
async def test_bad_input_is_a_400_naming_the_field_and_rule(
    api: ApiHarness, key: str, path: str, body: dict[str, object], param: str, fragment: str
) -> None:
    response = await api.post_create_body(path, key, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(param.split("[")[0])
    assert fragment in error["message"]


@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
async def test_missing_required_fields_are_named(api: ApiHarness, key: str, path: str) -> None:
    for missing in ("model", "prompt"):
        body = {"model": "gpt-image-2", "prompt": "x"}
        del body[missing]
        response = await api.client.post(
            path, json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"] == f"{missing}: is required"
        assert response.json()["error"]["param"] == missing


VALID_BODY = b'{"model": "gpt-image-2", "prompt": "a fox"}'


@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "must be valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"", "a JSON object is required"),
        (b"  \r\n ", "a JSON object is required"),
        (b'{"model": "gpt-image-2", "prompt": "caf\xe9"}', "must be valid JSON"),
        (b'{"model": "gpt-image-2", "prompt": "\xff\xfe"}', "must be valid JSON"),
        (b'{"model": "gpt-image-2", "prompt": "a\\ud800b"}', "must be valid JSON"),
        (
            b'{"model": "gpt-image-2", "prompt": "x", "n": ' + b"[" * 1100 + b"]" * 1100 + b"}",
            "must be valid JSON",
        ),
        (b'{"model": "gpt-image-2", "prompt": "x"} trailing', "must be valid JSON"),
    ],
)
async def test_malformed_json_and_non_object_bodies_are_400(
    api: ApiHarness, key: str, path: str, content: bytes, fragment: str
) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    response = await api.client.post(path, content=content, headers=headers)
    assert response.status_code == 400, (content, response.text)
    error = response.json()["error"]
    assert error["param"] == "body" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("body: ") and fragment in error["message"]


@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8"],
)
async def test_a_json_object_is_read_whatever_the_content_type_says(
    api: ApiHarness, key: str, path: str, content_type: str | None
) -> None:
    """Clients written for other providers (and `curl -d`) label bodies all sorts of ways;
    create and quote read a JSON object alike whatever the label."""
    headers = {"Authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await api.client.post(path, content=VALID_BODY, headers=headers)
    assert response.status_code == 200, response.text


async def test_nulls_empty_lists_case_and_unknown_fields_are_accepted(
    api: ApiHarness, key: str
) -> None:
    response = await api.create(
        key,
        quality=None,
        ratio="9:16",
        resolution="2K",
        size=None,
        image_urls=[],
        n=1,
        response_format="url",
    )
    assert response.status_code == 200, response.text
    result = await api.wait_terminal(key, response.json()["id"])
    image = await api.client.get(result["image_url"])
    assert Image.open(io.BytesIO(image.content)).size == (1152, 2048)


async def test_quality_is_ignored_for_gpt_image_2_r(api: ApiHarness, key: str) -> None:
    response = await api.create(key, model="gpt-image-2-r", quality="whatever")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-image-2-r"


async def test_size_overrides_ratio_and_resolution(api: ApiHarness, key: str) -> None:
    response = await api.create(key, size="1024x1536", ratio="16:9", resolution="4k")
    assert response.status_code == 200, response.text
    result = await api.wait_terminal(key, response.json()["id"])
    image = await api.client.get(result["image_url"])
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1536)


@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
async def test_oversized_body_is_413(api: ApiHarness, key: str, path: str) -> None:
    response = await api.post_create_body(path, key, prompt="x" * 2_000_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer nope", "Bearer ifk_" + "a" * 38],
)
async def test_requests_without_a_valid_key_are_401(
    api: ApiHarness, key: str, authorization: str | None
) -> None:
    """Before anything looks at the body: a bad body without a key is a 401 too."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    created = await api.create(key)
    task_id = created.json()["id"]
    answers = [await api.client.get(f"/v1/result/{task_id}", headers=headers)]
    for path in CREATE_BODY_ROUTES:
        for content in (VALID_BODY, b"{bad", b"", b"[]"):
            answers.append(await api.client.post(path, content=content, headers=headers))
    for response in answers:
        assert response.status_code == 401
        assert response.json()["error"] == {
            "message": "Invalid or missing API key.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }


async def test_another_keys_task_is_indistinguishable_from_a_missing_one(
    api: ApiHarness, key: str
) -> None:
    other = await api.new_key("other")
    task_id = (await api.create(key)).json()["id"]
    foreign = await api.poll(other, task_id)
    missing_id = "image_00000000-0000-4000-8000-000000000000"
    missing = await api.poll(other, missing_id)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["message"].replace(task_id, "X") == missing.json()["error"][
        "message"
    ].replace(missing_id, "X")
    garbage = await api.poll(key, "not-an-id")
    assert garbage.status_code == 404


async def test_another_keys_cached_task_takes_the_same_path_as_an_unknown_id(
    api: ApiHarness, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timing oracle: a finished task another key polled (so cached in memory) is
    looked up for a stranger exactly as an id nobody has: a cache miss, then the store."""
    stranger = await api.new_key("stranger")
    task_id = (await api.create(key)).json()["id"]
    await api.wait_terminal(key, task_id)  # completed, and cached for its owner
    store = api.runtime.store
    lookups: list[str] = []
    real_get_task = store.get_task

    async def counting_get_task(wanted: TaskId) -> Task | None:
        lookups.append(wanted)
        return await real_get_task(wanted)

    monkeypatch.setattr(store, "get_task", counting_get_task)
    unknown_id = "image_00000000-0000-4000-8000-000000000000"
    answers = {}
    for who, wanted in (("foreign", task_id), ("unknown", unknown_id)):
        lookups.clear()
        for _ in range(3):
            answers[who] = await api.poll(stranger, wanted)
        assert lookups == [wanted] * 3, who  # every time: the cache missed, the store asked
    assert answers["foreign"].status_code == answers["unknown"].status_code == 404
    assert answers["foreign"].content.replace(task_id.encode(), b"X") == answers[
        "unknown"
    ].content.replace(unknown_id.encode(), b"X")
    lookups.clear()
    assert (await api.poll(key, task_id)).status_code == 200
    assert lookups == []  # its owner's polls still come from memory


async def test_revoked_key_stops_working(api: ApiHarness) -> None:
    record_key = await api.new_key("short-lived")
    assert (await api.create(record_key)).status_code == 200
    keys = await api.runtime.store.list_keys()
    target = next(k for k in keys if k.name == "short-lived")
    await api.runtime.store.revoke_key(target.id, now=time.time())
    await api.runtime.keyring.refresh()
    assert (await api.create(record_key)).status_code == 401


async def test_same_request_gives_the_same_pixels(api: ApiHarness, key: str) -> None:
    digests = []
    for _ in range(2):
        task_id = (await api.create(key, prompt="determinism", size="1024x640")).json()["id"]
        result = await api.wait_terminal(key, task_id)
        digests.append((await api.client.get(result["image_url"])).content)
    assert digests[0] == digests[1]


async def test_image_links_expire_and_cannot_be_forged(api: ApiHarness, key: str) -> None:
    task_id = (await api.create(key)).json()["id"]
    url = httpx.URL((await api.wait_terminal(key, task_id))["image_url"])
    signature = url.params["signature"]
    tampered = url.copy_set_param(
        "signature", signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    )
    assert (await api.client.get(tampered)).status_code == 403
    assert (await api.client.get(url.copy_remove_param("signature"))).status_code == 403
    key_path = url.path.removeprefix("/files/")
    past = int(time.time()) - 10
    expired = url.copy_merge_params(
        {"expires": str(past), "signature": api.runtime.signer.signature(key_path, past)}
    )
    response = await api.client.get(expired)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "link_expired"
    later = url.copy_set_param("expires", str(int(url.params["expires"]) + 3600))
    assert (await api.client.get(later)).status_code == 403


async def test_public_base_url_builds_links(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "other", public_base_url="https://img.example.com/")
    lifespan, harness = await start_harness(settings)
    try:
        secret = await harness.new_key()
        task_id = (await harness.create(secret)).json()["id"]
        result = await harness.wait_terminal(secret, task_id)
        assert result["image_url"].startswith("https://img.example.com/files/")
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_healthz_and_openapi(api: ApiHarness) -> None:
    health = await api.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "worker": True}
    schema = (await api.client.get("/openapi.json")).json()
    create = schema["paths"]["/v1/image2/images"]["post"]
    assert set(create["responses"]) >= {"200", "400", "401"}
    body_schema = schema["components"]["schemas"]["CreateImageRequest"]
    for name in ("model", "prompt", "quality", "ratio", "resolution", "size", "image_urls"):
        assert body_schema["properties"][name].get("description"), name
    assert "/v1/result/{task_id}" in schema["paths"]


async def test_unknown_route_uses_the_error_body(api: ApiHarness) -> None:
    response = await api.client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


async def test_links_stop_working_after_the_configured_lifetime(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "short", image_url_ttl_seconds=2)
    lifespan, harness = await start_harness(settings)
    try:
        secret = await harness.new_key()
        task_id = (await harness.create(secret)).json()["id"]
        url = (await harness.wait_terminal(secret, task_id))["image_url"]
        assert (await harness.client.get(url)).status_code == 200
        # A link lives at least its lifetime, and dies within a second after it.
        expires = int(url.split("expires=")[1].split("&")[0])
        for made_at in (1000.0, 1000.001, 1000.999):
            body = harness.runtime.task_body(  # type: ignore[union-attr]
                await harness.runtime.store.get_task(task_id),  # type: ignore[union-attr,arg-type]
                base_url="http://test",
                now=made_at,
            )
            lives = int(body["image_url"].split("expires=")[1].split("&")[0]) - made_at
            assert 2 <= lives < 3, (made_at, lives)
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.1)
        expired = await harness.client.get(url)
        assert expired.status_code == 410
        fresh = (await harness.poll(secret, task_id)).json()["image_url"]
        assert fresh != url and (await harness.client.get(fresh)).status_code == 200
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_image_links_answer_head_requests(api: ApiHarness, key: str) -> None:
    task_id = (await api.create(key)).json()["id"]
    url = (await api.wait_terminal(key, task_id))["image_url"]
    head = await api.client.head(url)
    assert head.status_code == 200 and head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) > 0 and head.content == b""


async def test_the_api_serves_images_from_any_storage_backend(tmp_path: Path) -> None:
    """Runtime, runner, poll and /files use only the Storage interface: an in-memory
    backend serves the whole flow, and nothing is written to disk."""
    backends: list[MemoryStorage] = []

    def in_memory(signer: UrlSigner) -> MemoryStorage:
        backends.append(MemoryStorage(signer))
        return backends[-1]

    settings = make_settings(tmp_path / "data")
    lifespan, harness = await start_harness(settings, storage=in_memory)
    try:
        secret = await harness.new_key()
        task_id = (await harness.create(secret, size="1024x640")).json()["id"]
        url = (await harness.wait_terminal(secret, task_id))["image_url"]
        [memory] = backends
        [key] = memory.keys()
        assert httpx.URL(url).path == f"/files/{key}"
        image = await harness.client.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (1024, 640)
        head = await harness.client.head(url)
        assert head.headers["content-length"] == str(len(image.content)) and not head.content
        part = await harness.client.get(url, headers={"Range": "bytes=0-7"})
        assert part.status_code == 206 and part.content == image.content[:8]
        await memory.delete(key)
        gone = await harness.client.get(url)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "file_not_found"
        assert not (settings.data_dir / "images").exists()
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)
    assert backends[0].closed


async def test_image_links_answer_byte_ranges(api: ApiHarness, key: str) -> None:
    task_id = (await api.create(key)).json()["id"]
    url = (await api.wait_terminal(key, task_id))["image_url"]
    whole = await api.client.get(url)
    data, size = whole.content, len(whole.content)
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"]

    async def get(range_header: str, **extra: str) -> httpx.Response:
        return await api.client.get(url, headers={"Range": range_header, **extra})

    first = await get("bytes=0-9")
    assert first.status_code == 206 and first.content == data[:10]
    assert first.headers["content-range"] == f"bytes 0-9/{size}"
    assert first.headers["content-length"] == "10"
    tail = await get("bytes=-10")
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = await get(f"bytes={size - 3}-")
    assert rest.content == data[-3:] and rest.headers["content-range"].endswith(f"/{size}")
    past_end = await get(f"bytes=0-{size * 2}")
    assert past_end.status_code == 206 and past_end.content == data
    # Several ranges, other units and a stale If-Range get the whole image.
    for whole_again in (
        await get("bytes=0-1,5-6"),
        await get("items=0-1"),
        await get("bytes=0-1", **{"If-Range": '"stale"'}),
    ):
        assert whole_again.status_code == 200 and whole_again.content == data
    matching = await get("bytes=0-1", **{"If-Range": whole.headers["etag"]})
    assert matching.status_code == 206 and matching.content == data[:2]
    refused = await get(f"bytes={size}-")
    assert refused.status_code == 416
    assert refused.headers["content-range"] == f"bytes */{size}"
    assert refused.json()["error"]["param"] == "Range"
    assert refused.json()["error"]["code"] == "range_not_satisfiable"


async def test_an_embedded_app_leaves_the_garbage_collector_alone(tmp_path: Path) -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    lifespan, harness = await start_harness(make_settings(tmp_path / "data"))
    try:
        assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_the_command_line_asks_for_the_gc_tuning(tmp_path: Path) -> None:
    thresholds = gc.get_threshold()
    runtime = await Runtime.start(make_settings(tmp_path / "data"), tune_gc=True)
    try:
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # start-up's objects: not scanned again
    finally:
        await runtime.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.parametrize(
    ("trusted", "scheme"),
    [(None, "https"), (["10.0.0.0/8"], "http"), (["*"], "https")],
)
async def test_forwarded_headers_count_only_from_trusted_proxies(
    tmp_path: Path, trusted: list[str] | None, scheme: str
) -> None:
    """The test client connects from 127.0.0.1, trusted by default."""
    overrides = {} if trusted is None else {"trusted_proxies": trusted}
    lifespan, harness = await start_harness(make_settings(tmp_path / "data", **overrides))
    try:
        secret = await harness.new_key()
        task_id = (await harness.create(secret)).json()["id"]
        await harness.wait_terminal(secret, task_id)
        polled = await harness.client.get(
            f"/v1/result/{task_id}",
            headers={"Authorization": f"Bearer {secret}", "X-Forwarded-Proto": "https"},
        )
        assert polled.json()["image_url"].startswith(f"{scheme}://testserver/files/")
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_the_503_retry_after_is_a_setting(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "data", unavailable_retry_after_seconds=17))

    @app.get("/_test/unavailable")
    async def unavailable() -> None:
        raise ServiceUnavailable("The database is unavailable; try again shortly.")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/_test/unavailable")
    assert response.status_code == 503 and response.headers["retry-after"] == "17"
    assert response.json()["error"]["code"] == "service_unavailable"
