"""The OpenAI Images API routes, driven by the official `openai` SDK against a running
server: generate, edit (uploads), stream, models, OpenAI-shaped errors, billing per image,
idempotency, and partial failure."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from imageforge.keyring import create_api_key
from imageforge.settings import Settings
from imageforge.store import open_store
from imageforge.testing.processes import ServerProcess, create_key

#: Small, so that the upload limit test sends little; every other upload is a few KB.
UPLOAD_LIMIT = 256 * 1024
PRICE_LOW = 0.006  # the default price of a low-quality gpt-image-2 image


class Server:
    def __init__(
        self, process: ServerProcess, data_dir: Path, database_url: str | None = None
    ) -> None:
        self.process = process
        self.data_dir = data_dir
        self.database_url = database_url or Settings(data_dir=data_dir).resolved_database_url
        #: Every SDK client made, closed when the server goes (none is left to the GC).
        self.clients: list[openai.OpenAI] = []

    def new_key(self, credits: float | None = None) -> str:
        """A key written straight to the server's database (the CLI's way costs a process
        start per key); the server finds it on its first request."""

        async def create() -> str:
            store = await open_store(self.database_url)
            try:
                micros = None if credits is None else round(credits * 1_000_000)
                _, secret = await create_api_key(store, "sdk", balance_micros=micros)
            finally:
                await store.close()
            return secret

        return asyncio.run(create())

    def sdk(self, key: str, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        sdk = openai.OpenAI(api_key=key, base_url=f"{self.process.base_url}/v1", **options)
        self.clients.append(sdk)
        return sdk

    def close(self) -> None:
        for sdk in self.clients:
            sdk.close()

    def usage(self, key: str) -> dict[str, Any]:
        with self.process.client(key) as client:
            body: dict[str, Any] = client.get("/v1/usage").json()
            return body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("openai") / "data"
    data_dir.mkdir()
    create_key(data_dir)  # the first key: serve then prints no first-run banner
    env = {
        "IMAGEFORGE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "IMAGEFORGE_MODELS": '{"house-style": {"max_references": 8}}',
    }
    with ServerProcess(data_dir, **env) as process:
        running = Server(process, data_dir)
        yield running
        running.close()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return server.new_key()


@pytest.fixture(scope="module")
def client(server: Server, key: str) -> openai.OpenAI:
    return server.sdk(key)


def decoded(b64_json: str | None) -> Image.Image:
    assert b64_json is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    image.load()
    return image


def png(size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def red_share(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> float:
    part = image.convert("RGB").crop(box) if box else image.convert("RGB")
    small = part.resize((max(1, part.width // 8), max(1, part.height // 8)))
    pixels = list(small.get_flattened_data())
    return sum(1 for r, g, b in pixels if r > 200 and g < 60 and b < 60) / len(pixels)


# Generate ----------------------------------------------------------------------------


def test_generate_answers_b64_json_by_default_with_one_task_per_image(
    server: Server, client: openai.OpenAI
) -> None:
    raw = client.images.with_raw_response.generate(prompt="a red fox in the snow", n=2)
    answer = raw.parse()
    task_ids = raw.headers["imageforge-task-ids"].split(",")
    assert len(task_ids) == 2 and len(set(task_ids)) == 2
    assert answer.data is not None and len(answer.data) == 2
    for image in answer.data:
        assert image.url is None
        picture = decoded(image.b64_json)
        assert picture.format == "PNG" and picture.size == (1024, 1024)
    assert answer.size == "1024x1024" and answer.quality == "low"
    assert answer.output_format == "png" and answer.background == "opaque"
    assert answer.usage is not None and answer.usage.total_tokens >= 0
    with server.process.client(server.new_key()) as other:
        assert other.get(f"/v1/result/{task_ids[0]}").status_code == 404  # still the owner's
    with server.process.client(client.api_key) as mine:
        assert mine.get(f"/v1/result/{task_ids[0]}").json()["status"] == "completed"


def test_generate_with_url_answers_signed_links_that_serve_the_image(
    client: openai.OpenAI,
) -> None:
    answer = client.images.generate(prompt="a lighthouse", response_format="url", n=2)
    assert answer.data is not None and len(answer.data) == 2
    for image in answer.data:
        assert image.b64_json is None and image.url is not None
        served = httpx.get(image.url, timeout=10)  # the link needs no API key
        assert served.status_code == 200
        assert Image.open(io.BytesIO(served.content)).size == (1024, 1024)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"size": "1024x1024"}, (1024, 1024)),
        ({"size": "auto"}, (1024, 1024)),
        ({}, (1024, 1024)),
        ({"size": "1536x1024"}, (1536, 1024)),
        ({"size": "1024x1536"}, (1024, 1536)),
        ({"size": "1536x864"}, (1536, 864)),  # the contract's 16:9 at 1k
        ({"size": "auto", "extra_body": {"ratio": "16:9"}}, (1536, 864)),
        ({"extra_body": {"ratio": "4:3", "resolution": "1k"}}, (1024, 768)),
    ],
)
def test_every_size_form_resolves_as_the_task_api_does(
    client: openai.OpenAI, options: dict[str, Any], expected: tuple[int, int]
) -> None:
    answer = client.images.generate(prompt="a harbour at dawn", **options)
    assert answer.data is not None
    assert decoded(answer.data[0].b64_json).size == expected
    assert answer.size == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize(("output_format", "pillow"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_format_and_compression_are_honoured(
    client: openai.OpenAI, output_format: Any, pillow: str
) -> None:
    sizes = []
    for compression in (100, 20):
        answer = client.images.generate(
            prompt="a field of poppies",
            output_format=output_format,
            output_compression=compression,
        )
        assert answer.output_format == output_format and answer.data is not None
        image = decoded(answer.data[0].b64_json)
        assert image.format == pillow
        sizes.append(len(answer.data[0].b64_json or ""))
    assert sizes[1] < sizes[0]


def test_quality_auto_is_the_models_default_and_high_is_high(client: openai.OpenAI) -> None:
    assert client.images.generate(prompt="a vase", quality="auto").quality == "low"
    assert client.images.generate(prompt="a vase", quality="high").quality == "high"
    answer = client.images.generate(prompt="a vase", model="gpt-image-2-r", quality="high")
    assert answer.quality is None  # the model ignores quality, as on the task API


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"size": "1000x1000"}, "size", "multiples of 16"),
        ({"size": "256x256"}, "size", "total pixels"),
        ({"n": 11}, "n", "1 to 10"),
        ({"n": 0}, "n", "1 to 10"),
        ({"model": "dall-e-3"}, "model", "unknown model"),
        ({"quality": "hd"}, "quality", "low, medium, high, auto"),
        ({"background": "transparent"}, "background", "opaque"),
        ({"output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"output_compression": 50}, "output_compression", "jpeg and webp"),
        ({"response_format": "url", "output_format": "jpeg"}, "output_format", "b64_json"),
        ({"partial_images": 4, "stream": True}, "partial_images", "0 to 3"),
        ({"partial_images": False}, "partial_images", "not a boolean"),
        ({"n": True}, "n", "not a boolean"),
        ({"stream": 0}, "stream", "true or false"),
        ({"model": "gpt-image-2-r", "size": "2048x2048"}, "size", "1K sizes only"),
    ],
)
def test_bad_requests_raise_the_sdks_bad_request_error(
    server: Server, options: dict[str, Any], param: str, words: str
) -> None:
    key = server.new_key()
    with pytest.raises(openai.BadRequestError) as raised:
        server.sdk(key).images.generate(prompt="a cat", **options)
    error = raised.value
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["type"] == "invalid_request_error" and error.body["param"] == param
    assert words in error.body["message"]
    assert server.usage(key)["tasks"] == 0  # refused before anything was created


def test_a_bad_key_raises_authentication_error(server: Server) -> None:
    for call in (
        lambda sdk: sdk.images.generate(prompt="a cat"),
        lambda sdk: sdk.models.list(),
    ):
        with pytest.raises(openai.AuthenticationError) as raised:
            call(server.sdk("not-a-key"))
        assert isinstance(raised.value.body, dict)
        assert raised.value.body["code"] == "invalid_api_key"


def test_the_task_api_keeps_its_own_error_vocabulary(server: Server, key: str) -> None:
    with server.process.client(key) as http:
        missing = http.get("/v1/result/image_00000000-0000-4000-8000-000000000000")
        openai_missing = http.get("/v1/models/no-such-model")
    assert missing.json()["error"]["type"] == "not_found_error"
    assert openai_missing.status_code == 404
    assert openai_missing.json()["error"] == {
        "message": "The model 'no-such-model' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


# Billing and idempotency --------------------------------------------------------------


def test_a_request_for_n_images_is_billed_as_n_tasks(server: Server) -> None:
    key = server.new_key(credits=1)
    server.sdk(key).images.generate(prompt="three birds", n=3)
    usage = server.usage(key)
    assert usage["tasks"] == 3
    assert usage["spend"] == pytest.approx(3 * PRICE_LOW)
    assert usage["balance"] == pytest.approx(1 - 3 * PRICE_LOW)


def test_credits_that_cover_no_image_raise_rate_limit_error_unretried(server: Server) -> None:
    key = server.new_key(credits=0.001)
    with pytest.raises(openai.RateLimitError) as raised:
        server.sdk(key, max_retries=2).images.generate(prompt="a cat")
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "insufficient_quota"
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_credits_that_run_out_midway_answer_the_images_accepted(server: Server) -> None:
    key = server.new_key(credits=0.013)  # two low images and change
    answer = server.sdk(key).images.generate(prompt="four birds", n=4)
    assert answer.data is not None and len(answer.data) == 2
    usage = server.usage(key)
    assert usage["tasks"] == 2 and usage["spend"] == pytest.approx(2 * PRICE_LOW)


def test_an_idempotency_key_replays_every_image_without_charging_again(server: Server) -> None:
    key = server.new_key(credits=1)
    sdk = server.sdk(key)
    headers = {"Idempotency-Key": "order-42"}
    first = sdk.images.with_raw_response.generate(prompt="two owls", n=2, extra_headers=headers)
    again = sdk.images.with_raw_response.generate(prompt="two owls", n=2, extra_headers=headers)
    assert first.headers["imageforge-task-ids"] == again.headers["imageforge-task-ids"]
    assert server.usage(key)["tasks"] == 2
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.images.generate(prompt="two owls", n=3, extra_headers=headers)
    assert server.usage(key)["tasks"] == 2


def test_an_edit_replays_under_its_key_and_another_file_is_another_request(
    server: Server,
) -> None:
    key = server.new_key(credits=1)
    sdk = server.sdk(key)
    headers = {"Idempotency-Key": "edit-7"}
    photo = png((256, 256), (9, 99, 199))
    ids = [
        sdk.images.with_raw_response.edit(
            image=("p.png", photo, "image/png"), prompt="snow", extra_headers=headers
        ).headers["imageforge-task-ids"]
        for _ in range(2)
    ]
    assert ids[0] == ids[1]
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.images.edit(
            image=("p.png", png((256, 256), (1, 2, 3)), "image/png"),
            prompt="snow",
            extra_headers=headers,
        )
    assert server.usage(key)["tasks"] == 1


# Edit ---------------------------------------------------------------------------------


def test_an_uploaded_image_is_the_tasks_reference_read_from_storage(
    server: Server, client: openai.OpenAI
) -> None:
    red = png((1024, 1024), (230, 20, 20))
    edited = client.images.edit(image=("red.png", red, "image/png"), prompt="a still life")
    plain = client.images.generate(prompt="a still life")
    assert edited.data is not None and plain.data is not None
    assert red_share(decoded(edited.data[0].b64_json)) > red_share(decoded(plain.data[0].b64_json))
    stored = list((server.data_dir / "images" / "uploads").iterdir())
    assert any(path.read_bytes() == red for path in stored)


def test_edit_takes_several_images_as_image_array(client: openai.OpenAI) -> None:
    files = [
        (f"ref-{index}.png", png((512, 512), color), "image/png")
        for index, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])
    ]
    answer = client.images.edit(image=files, prompt="a collage", n=2, size="1536x1024")
    assert answer.data is not None and len(answer.data) == 2
    assert decoded(answer.data[0].b64_json).size == (1536, 1024)


def test_a_mask_keeps_the_image_where_opaque_and_edits_where_transparent(
    client: openai.OpenAI,
) -> None:
    original = png((1024, 1024), (255, 0, 0))
    mask_image = Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    mask_image.paste((0, 0, 0, 0), (512, 0, 1024, 1024))  # right half: edit here
    mask = io.BytesIO()
    mask_image.save(mask, format="PNG")
    answer = client.images.edit(
        image=("photo.png", original, "image/png"),
        mask=("mask.png", mask.getvalue(), "image/png"),
        prompt="a blue sky",
    )
    assert answer.data is not None
    result = decoded(answer.data[0].b64_json)
    assert red_share(result, (0, 0, 480, 1024)) > 0.99
    assert red_share(result, (544, 0, 1024, 1024)) < 0.5


@pytest.mark.parametrize(
    ("files", "param", "words"),
    [
        ({"image": ("a.txt", b"not an image", "text/plain")}, "image[0]", "not a PNG"),
        (
            {
                "image": ("a.png", png((1024, 1024), (1, 2, 3)), "image/png"),
                "mask": ("m.png", png((1024, 1024), (0, 0, 0)), "image/png"),
            },
            "mask",
            "alpha",
        ),
        (
            {
                "image": ("a.png", png((1024, 1024), (1, 2, 3)), "image/png"),
                "mask": ("m.png", png((512, 512), (0, 0, 0, 0), "RGBA"), "image/png"),
            },
            "mask",
            "1024x1024",
        ),
        (
            {"image": [(f"{i}.png", png((64, 64), (i, 0, 0)), "image/png") for i in range(7)]},
            "image",
            "at most 6",
        ),
    ],
)
def test_bad_uploads_raise_bad_request_error(
    client: openai.OpenAI, files: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(prompt="edit", **files)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == param and words in raised.value.body["message"]


def test_a_truncated_upload_fails_its_tasks_refunded_and_answers_bad_request(
    server: Server,
) -> None:
    photo = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(photo, format="JPEG")
    truncated = photo.getvalue()[: len(photo.getvalue()) // 2]  # its header still reads
    key = server.new_key(credits=1)
    with pytest.raises(openai.BadRequestError) as raised:
        server.sdk(key).images.edit(image=("cut.jpg", truncated, "image/jpeg"), prompt="x", n=2)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"].startswith("all 2 images failed: image[0] (uploaded):")
    assert raised.value.body["param"] == "image"
    usage = server.usage(key)
    assert usage["tasks"] == 2 and usage["spend"] == 0


def test_uploads_past_the_limit_get_413_in_openais_shape(server: Server, key: str) -> None:
    noise = Image.effect_noise((400, 400), 100).convert("RGB")
    big = io.BytesIO()
    noise.save(big, format="PNG")
    assert len(big.getvalue()) > UPLOAD_LIMIT
    with pytest.raises(openai.APIStatusError) as raised:
        server.sdk(key).images.edit(image=("big.png", big.getvalue(), "image/png"), prompt="x")
    assert raised.value.status_code == 413
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "invalid_request_error"
    assert raised.value.body["code"] == "payload_too_large"
    assert f"{UPLOAD_LIMIT:,} bytes" in raised.value.body["message"]
    assert server.usage(key)["tasks"] >= 0  # the server is still there


def test_a_json_body_over_the_json_limit_is_still_refused_on_generations(
    server: Server, key: str
) -> None:
    with server.process.client(key) as http:
        answer = http.post(
            "/v1/images/generations",
            content=b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}',
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 413


# Stream and models --------------------------------------------------------------------


def test_stream_sends_a_completed_event_per_image(client: openai.OpenAI) -> None:
    events = list(client.images.generate(prompt="a kite", stream=True, n=2, partial_images=2))
    assert [event.type for event in events] == ["image_generation.completed"] * 2
    for event in events:
        assert decoded(event.b64_json).size == (1024, 1024)
        assert event.size == "1024x1024" and event.output_format == "png"
        assert event.usage.total_tokens >= 0


def test_an_edit_streams_image_edit_events(client: openai.OpenAI) -> None:
    events = list(
        client.images.edit(
            image=("a.png", png((256, 256), (10, 200, 10)), "image/png"),
            prompt="a meadow",
            stream=True,
            output_format="jpeg",
        )
    )
    assert [event.type for event in events] == ["image_edit.completed"]
    assert decoded(events[0].b64_json).format == "JPEG"


def test_models_lists_the_configured_models(client: openai.OpenAI) -> None:
    listed = {model.id: model for model in client.models.list()}
    assert set(listed) == {"gpt-image-2", "gpt-image-2-r", "house-style"}
    assert all(
        model.object == "model" and model.owned_by == "imageforge" for model in listed.values()
    )
    assert client.models.retrieve("house-style").id == "house-style"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")


# Partial failure ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("openai-failing") / "data"
    data_dir.mkdir()
    create_key(data_dir)
    env = {
        "IMAGEFORGE_ENGINE": "imageforge.testing.engines:PartlyFailingEngine",
        "IMAGEFORGE_OPENAI_WAIT_SECONDS": "1",
    }
    with ServerProcess(data_dir, **env) as process:
        running = Server(process, data_dir)
        yield running
        running.close()


def test_when_some_images_fail_the_answer_carries_the_others_and_they_are_refunded(
    failing: Server,
) -> None:
    key = failing.new_key(credits=1)
    raw = failing.sdk(key).images.with_raw_response.generate(prompt="alternate: birds", n=4)
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == 2
    assert len(raw.headers["imageforge-task-ids"].split(",")) == 4
    usage = failing.usage(key)
    assert usage["tasks"] == 4
    assert usage["spend"] == pytest.approx(2 * PRICE_LOW)  # the two failed were refunded
    assert usage["days"][0]["failed"] == 2


def test_when_every_image_fails_the_sdk_raises_without_retrying(failing: Server) -> None:
    key = failing.new_key(credits=1)
    with pytest.raises(openai.InternalServerError) as raised:
        failing.sdk(key, max_retries=2).images.generate(prompt="fail: birds", n=2)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "server_error"
    assert raised.value.body["message"].startswith("all 2 images failed: refused")
    assert len(raised.value.response.headers["imageforge-task-ids"].split(",")) == 2
    usage = failing.usage(key)
    assert usage["tasks"] == 2 and usage["spend"] == 0  # not retried, all refunded


def test_a_stream_whose_images_all_fail_raises_an_api_error(failing: Server) -> None:
    key = failing.new_key()
    with pytest.raises(openai.APIError, match="the image failed: refused"):
        list(failing.sdk(key).images.generate(prompt="fail: a kite", stream=True))


def test_images_not_done_within_the_wait_get_504_naming_their_tasks(failing: Server) -> None:
    key = failing.new_key()
    with pytest.raises(openai.APIStatusError) as raised:
        failing.sdk(key).images.generate(prompt="slow: a snail")
    assert raised.value.status_code == 504
    assert isinstance(raised.value.body, dict)
    [task_id] = raised.value.response.headers["imageforge-task-ids"].split(",")
    assert f"GET /v1/result/{{id}} for {task_id}" in raised.value.body["message"]


# PostgreSQL ---------------------------------------------------------------------------


def test_on_postgresql_images_are_tasks_billed_and_replayed_alike(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with ServerProcess(data_dir, IMAGEFORGE_DATABASE_URL=fresh_pg_url) as process:
        server = Server(process, data_dir, fresh_pg_url)
        try:
            key = server.new_key(credits=1)
            sdk = server.sdk(key)
            headers = {"Idempotency-Key": "pg-1"}
            first = sdk.images.with_raw_response.generate(
                prompt="three cranes", n=3, extra_headers=headers
            )
            again = sdk.images.with_raw_response.generate(
                prompt="three cranes", n=3, extra_headers=headers
            )
            assert len(first.parse().data or []) == 3
            assert first.headers["imageforge-task-ids"] == again.headers["imageforge-task-ids"]
            usage = server.usage(key)
            assert usage["tasks"] == 3 and usage["spend"] == pytest.approx(3 * PRICE_LOW)
        finally:
            server.close()
