"""The OpenAI routes' builders make exactly their documented shapes, and those shapes are
what the `openai` SDK's own types read."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import ImageEditCompletedEvent, ImageGenCompletedEvent, ImagesResponse, Model

from imageforge import openai_wire
from imageforge.openai_wire import (
    ImageData,
    ImageUsage,
    ModelEntry,
    ModelList,
    completed_event_body,
    image_data_body,
    images_response_body,
    model_body,
    model_list_body,
    usage_body,
)
from tests.test_wire import assert_shape

REPORTED: list[dict[str, Any] | None] = [
    {
        "input_tokens": 50,
        "output_tokens": 4160,
        "total_tokens": 4210,
        "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
    },
    None,
    {"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"text_tokens": 7}},
    {"input_tokens": True, "output_tokens": "12"},  # not counts: ignored
]


def test_usage_sums_what_the_engines_reported() -> None:
    body = usage_body(REPORTED)
    assert_shape(ImageUsage, body)
    assert body == {
        "input_tokens": 57,
        "input_tokens_details": {"image_tokens": 40, "text_tokens": 17},
        "output_tokens": 4163,
        "total_tokens": 4210,
    }
    assert usage_body([None, {}])["total_tokens"] == 0


@pytest.mark.parametrize("quality", ["low", None])
def test_images_response(quality: str | None) -> None:
    data = [image_data_body(b64_json="aGk="), image_data_body(url="http://x/files/a.png")]
    for item in data:
        assert_shape(ImageData, item)
    body = images_response_body(
        created=1774836724,
        data=data,
        output_format="webp",
        quality=quality,
        size="1536x864",
        usage=usage_body(REPORTED[:1]),
    )
    assert_shape(openai_wire.ImagesResponse, body)
    parsed = ImagesResponse.model_validate(body)
    assert parsed.data is not None and parsed.data[1].url == "http://x/files/a.png"
    assert parsed.usage is not None and parsed.usage.total_tokens == 4210


@pytest.mark.parametrize(
    ("kind", "sdk_type"),
    [("image_generation", ImageGenCompletedEvent), ("image_edit", ImageEditCompletedEvent)],
)
@pytest.mark.parametrize("quality", ["high", None])
def test_completed_events_are_the_sdks_events(
    kind: str, sdk_type: type[Any], quality: str | None
) -> None:
    body = completed_event_body(
        f"{kind}.completed",
        b64_json="aGk=",
        created_at=1774836724,
        output_format="png",
        quality=quality,
        size="1024x1024",
        usage=usage_body([None]),
    )
    event = sdk_type.model_validate(body)
    assert event.type == f"{kind}.completed"
    assert event.quality == (quality or "auto")


def test_models() -> None:
    body = model_list_body(["gpt-image-2", "house"], created=1774836724)
    assert_shape(ModelList, body)
    for entry in body["data"]:
        assert_shape(ModelEntry, entry)
        assert Model.model_validate(entry).owned_by == "imageforge"
    assert model_body("house", created=1)["id"] == "house"
