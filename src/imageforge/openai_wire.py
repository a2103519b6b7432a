"""The JSON shapes of the OpenAI Images API routes, as OpenAI's API spells them.

The counterpart of wire.py for `POST /v1/images/generations`, `POST /v1/images/edits` and
`GET /v1/models`: pydantic models document the shapes (OpenAPI) and parse the fields; the
builders at the end make the dicts that are sent. Field names follow the `openai` SDK's
types (`openai.types.ImagesResponse`, `ImageGenCompletedEvent`, `Model`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imageforge.catalog import MAX_PROMPT_CHARS


class ImageGenerationRequest(BaseModel):
    """Body of `POST /v1/images/generations` (and the fields of `POST /v1/images/edits`).
    Unknown fields are ignored and `null` means "not sent", as on the task API."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"prompt": "A lighthouse on a cliff, golden hour"},
                {
                    "model": "gpt-image-2",
                    "prompt": "A lighthouse on a cliff, golden hour",
                    "n": 2,
                    "size": "1536x1024",
                    "quality": "medium",
                    "response_format": "url",
                },
            ]
        },
    )

    prompt: str = Field(
        description="What to draw; not empty, at most 32,000 characters.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_PROMPT_CHARS},
    )
    model: str | None = Field(
        None, description="A configured model; default `gpt-image-2`.", examples=["gpt-image-2"]
    )
    n: int | None = Field(
        None,
        description="How many images, 1 to 10 (default 1): one task each.",
        examples=[1],
        json_schema_extra={"minimum": 1, "maximum": 10},
    )
    size: str | None = Field(
        None,
        description="`{W}x{H}` under the task API's size rules (edges multiples of 16, "
        "longest ≤ 3840, long:short ≤ 3:1, 655,360 ≤ W·H ≤ 8,294,400), or `auto` "
        "(default): 1024x1024, or the `ratio`/`resolution` extension fields' size.",
        examples=["1024x1024"],
    )
    quality: str | None = Field(
        None,
        description="`low`, `medium`, `high` or `auto` (default: the model's default, `low`).",
        json_schema_extra={"enum": ["low", "medium", "high", "auto", None]},
    )
    response_format: str | None = Field(
        None,
        description="`b64_json` (default, as OpenAI's GPT Image models answer) or `url` (a "
        "signed link that needs no key, valid 24 hours by default).",
        json_schema_extra={"enum": ["b64_json", "url", None]},
    )
    output_format: str | None = Field(
        None,
        description="`png` (default), `jpeg` or `webp`. Links (`url`) serve the image as "
        "stored (png), so jpeg and webp need `b64_json`.",
        json_schema_extra={"enum": ["png", "jpeg", "webp", None]},
    )
    output_compression: int | None = Field(
        None,
        description="0–100 (default 100), for jpeg and webp only.",
        json_schema_extra={"minimum": 0, "maximum": 100},
    )
    background: str | None = Field(
        None,
        description="`auto` (default) or `opaque`. `transparent` is refused (400): the "
        "engines draw opaque images.",
        json_schema_extra={"enum": ["auto", "opaque", "transparent", None]},
    )
    moderation: str | None = Field(
        None,
        description="`auto` or `low`; accepted, and the same to imageforge, which does "
        "not moderate prompts itself.",
        json_schema_extra={"enum": ["auto", "low", None]},
    )
    user: str | None = Field(None, description="An end-user id; accepted and not used.")
    stream: bool | None = Field(
        None,
        description="true: answer with server-sent events (`image_generation.completed`, "
        "or `image_edit.completed` on edits, one per image as it is done).",
    )
    partial_images: int | None = Field(
        None,
        description="0–3 partial images per image while streaming, where the engine "
        "provides them (none of the built-in engines does: only the completed events come).",
    )
    ratio: str | None = Field(
        None,
        description="Extension: the task API's `ratio`, used when `size` is `auto` or absent.",
        examples=["16:9"],
    )
    resolution: str | None = Field(
        None,
        description="Extension: the task API's `resolution` (`1k`, `2k`, `4k`), with `ratio`, "
        "when `size` is `auto` or absent.",
        examples=["2k"],
    )
    callback_url: str | None = Field(
        None,
        description="Extension: the task API's `callback_url`, set on each image's task: when "
        "it ends, its `GET /v1/result/{id}` object is POSTed there, signed per Standard "
        "Webhooks with the key's `whsec_…` secret.",
        examples=["https://example.com/hooks/imageforge"],
    )

    @field_validator("n", "output_compression", "partial_images", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # pydantic reads `true`/`false` as 1/0 for an integer; the schema says integer, and
        # a boolean there is a client's mistake worth a 400 (a form's text never is one).
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        return value

    @field_validator("stream", mode="before")
    @classmethod
    def _a_boolean(cls, value: object) -> object:
        # In JSON, only true or false (pydantic would read 0, 1 and "false" too).
        if value is not None and not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value


class ImageEditForm(ImageGenerationRequest):
    """The fields of `POST /v1/images/edits` (multipart/form-data), beside its files:
    `image` (one file) or `image[]` (up to 16), and an optional `mask`."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("stream", mode="before")
    @classmethod
    def _a_boolean(cls, value: object) -> object:
        return value  # a form's fields are text: "true" and "false" are how it says so


class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="The image, base64 (`b64_json`).")
    url: str | None = Field(None, description="A signed link to the image (`url`).")
    revised_prompt: str | None = Field(None, description="Always null: prompts are not revised.")


class InputTokensDetails(BaseModel):
    image_tokens: int
    text_tokens: int


class ImageUsage(BaseModel):
    """Tokens as the engines reported them (summed over the images); engines that count
    none (offline, diffusers) report 0."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    """Answer of `POST /v1/images/generations` and `/v1/images/edits` once the images are
    done: those that succeeded, in order (fewer than `n` when some failed)."""

    created: int = Field(description="Unix seconds.")
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: Literal["png", "jpeg", "webp"]
    quality: Literal["low", "medium", "high"] | None = Field(
        description="The quality the images were made at; null for models that ignore it."
    )
    size: str = Field(description="`{W}x{H}` of the images.", examples=["1024x1024"])
    usage: ImageUsage


class ModelEntry(BaseModel):
    id: str = Field(examples=["gpt-image-2"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: when this server started serving it.")
    owned_by: str = Field(examples=["imageforge"])


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


# Builders --------------------------------------------------------------------------

OWNED_BY = "imageforge"

_USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens")
_DETAIL_KEYS = ("image_tokens", "text_tokens")


def usage_body(reported: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """`ImageUsage`: the tasks' engine-reported token counts, summed."""

    def count(source: Mapping[str, Any] | None, key: str) -> int:
        value = (source or {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    totals = {key: sum(count(usage, key) for usage in reported) for key in _USAGE_KEYS}
    details = {
        key: sum(count((usage or {}).get("input_tokens_details"), key) for usage in reported)
        for key in _DETAIL_KEYS
    }
    return {
        "input_tokens": totals["input_tokens"],
        "input_tokens_details": details,
        "output_tokens": totals["output_tokens"],
        "total_tokens": totals["total_tokens"] or totals["input_tokens"] + totals["output_tokens"],
    }


def image_data_body(*, b64_json: str | None = None, url: str | None = None) -> dict[str, Any]:
    """`ImageData`."""
    return {"b64_json": b64_json, "url": url, "revised_prompt": None}


def images_response_body(
    *,
    created: int,
    data: list[dict[str, Any]],
    output_format: str,
    quality: str | None,
    size: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    """`ImagesResponse`."""
    return {
        "created": created,
        "data": data,
        "background": "opaque",
        "output_format": output_format,
        "quality": quality,
        "size": size,
        "usage": usage,
    }


def completed_event_body(
    event_type: str,
    *,
    b64_json: str,
    created_at: int,
    output_format: str,
    quality: str | None,
    size: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    """`image_generation.completed` / `image_edit.completed` (the SDK's `ImageGenCompletedEvent`,
    `ImageEditCompletedEvent`). `quality` is `auto` for models that ignore it: the event's
    field cannot be null."""
    return {
        "type": event_type,
        "b64_json": b64_json,
        "created_at": created_at,
        "background": "opaque",
        "output_format": output_format,
        "quality": quality or "auto",
        "size": size,
        "usage": usage,
    }


def model_body(name: str, *, created: int) -> dict[str, Any]:
    """`ModelEntry`."""
    return {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY}


def model_list_body(names: Sequence[str], *, created: int) -> dict[str, Any]:
    """`ModelList`."""
    return {"object": "list", "data": [model_body(name, created=created) for name in names]}
