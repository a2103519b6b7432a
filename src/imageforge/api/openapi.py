"""The OpenAPI document: FastAPI's, corrected to say what the server really answers.

- Invalid input is a 400 with imageforge's error body, never FastAPI's 422.
- Routes that parse their JSON body themselves (`request_body.parse_json_body`) declare it
  with `json_body_schema`; the models named there are added to the components here.
- Every operation that takes a body can answer 408 (the body stalled) and 413 (too large):
  the body guard answers those for every route, so every route documents them.
- The create body's `model` lists the configured models, each with its reference count and
  resolutions, and the rules that tie fields together (`resolution` needs `ratio` unless
  `size` is sent; 4K only in its ratios): the models are configuration, so only the running
  app knows them. What JSON Schema cannot say (a size's arithmetic) the descriptions do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imageforge.api.request_body import documented_bodies
from imageforge.api.responses import ERROR_RESPONSES
from imageforge.catalog import ModelSpec
from imageforge.sizes import FOUR_K_RATIOS, RESOLUTIONS

#: What FastAPI names its own validation error shapes, which imageforge never sends.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
#: Answers of the body guard, possible wherever a request has a body.
_BODY_GUARD_STATUSES = (408, 413)


def install_openapi(app: FastAPI, *, models: Mapping[str, ModelSpec]) -> None:
    """Replace `app.openapi` with the corrected document, built once on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, body_schema in documented_bodies().items():
                components.setdefault(name, body_schema)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    _correct_responses(operation)
            for name in _FASTAPI_VALIDATION_SCHEMAS:
                components.pop(name, None)
            _describe_models(components, models)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _correct_responses(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    generated = responses.get("422", {})
    if "HTTPValidationError" in str(generated):
        del responses["422"]
        responses.setdefault("400", openapi_error(400))
    if "requestBody" in operation:
        for status in _BODY_GUARD_STATUSES:
            responses.setdefault(str(status), openapi_error(status))


def _describe_models(components: dict[str, Any], models: Mapping[str, ModelSpec]) -> None:
    """The create body's rules that depend on the configured models, and those that tie
    one field to another, as JSON Schema can state them (`if`/`then`)."""
    body = components.get("CreateImageRequest")
    if body is None or not models:
        return
    properties = body["properties"]
    properties["model"]["enum"] = list(models)
    most = max(spec.max_references for spec in models.values())
    _set_on_branch(properties["image_urls"], "array", maxItems=most)
    rules: list[dict[str, Any]] = []
    for spec in models.values():
        allowed = list(RESOLUTIONS[: RESOLUTIONS.index(spec.max_resolution) + 1])
        rules.append(
            {
                "if": {"properties": {"model": {"const": spec.name}}, "required": ["model"]},
                "then": {
                    "properties": {
                        "image_urls": {
                            "anyOf": [
                                {"type": "array", "maxItems": spec.max_references},
                                {"type": "null"},
                            ]
                        },
                        "resolution": {"enum": [*allowed, None]},
                    }
                },
            }
        )
    without_size = {
        "anyOf": [{"not": {"required": ["size"]}}, {"properties": {"size": {"type": "null"}}}]
    }
    resolution_sent = {"required": ["resolution"], "properties": {"resolution": {"type": "string"}}}
    # `resolution` needs a `ratio` unless `size` is sent; 4K only in the widest ratios.
    rules.append(
        {
            "if": {"allOf": [resolution_sent, without_size]},
            "then": {"required": ["ratio"], "properties": {"ratio": {"type": "string"}}},
        }
    )
    rules.append(
        {
            "if": {
                "allOf": [
                    {"required": ["resolution"], "properties": {"resolution": {"const": "4k"}}},
                    without_size,
                ]
            },
            "then": {"properties": {"ratio": {"enum": sorted(FOUR_K_RATIOS)}}},
        }
    )
    body["allOf"] = rules


def _set_on_branch(schema: dict[str, Any], kind: str, **keywords: Any) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == kind:
            branch.update(keywords)


def openapi_error(status: int) -> dict[str, Any]:
    """One of `ERROR_RESPONSES` as it appears in the document."""
    entry = ERROR_RESPONSES[status]
    return {
        "description": entry["description"],
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "example": entry["content"]["application/json"]["example"],
            }
        },
    }
