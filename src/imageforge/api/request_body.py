"""The one JSON body parser: every route with a JSON body reads it here, after
authentication.

So a request without a valid key gets its 401 before anything looks at the body, the
hottest write path skips FastAPI's body dependency, and every route reads a body
alike: whatever its Content-Type says (clients written for other providers, and
`curl -d`, label JSON all sorts of ways), as strict JSON (orjson: UTF-8 only, no lone
surrogates, nesting at most 1,024 deep), with the errors of `describe_validation_error`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from imageforge.api.errors import describe_validation_error
from imageforge.api.json_errors import invalid_json_message
from imageforge.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)

#: Models of the bodies routes declare with `json_body_schema`, for the API document.
_DOCUMENTED: dict[str, type[BaseModel]] = {}


async def parse_json_body(request: Request, model: type[Model]) -> Model:
    return parse_json_bytes(await request.body(), model)


def parse_json_bytes(raw: bytes, model: type[Model]) -> Model:
    """`parse_json_body` once the body is read (the hot create route reads its own)."""
    if not raw.strip():
        raise InvalidRequest("body: a JSON object is required", param="body")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = invalid_json_message(exc.msg, exc.lineno, exc.colno)
        raise InvalidRequest(message, param="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body: must be a JSON object", param="body")
    return validate_fields(model, data)


def validate_fields(model: type[Model], data: dict[str, Any]) -> Model:
    """`data` (a parsed JSON object, or a form's fields) as `model`; the first problem is
    a 400 worded by `describe_validation_error`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        first["loc"] = ("body", *tuple(first.get("loc", ())))
        param, message = describe_validation_error(first)
        raise InvalidRequest(message, param=param) from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that parses its body with `parse_json_body`
    (its model joins the document's components, see `documented_bodies`)."""
    _DOCUMENTED[model.__name__] = model
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def documented_bodies() -> dict[str, Any]:
    """JSON Schemas of every model `json_body_schema` named, and of the models they use,
    by component name."""
    if not _DOCUMENTED:
        return {}
    _, definitions = models_json_schema(
        [(model, "validation") for model in _DOCUMENTED.values()],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = definitions.get("$defs", {})
    return schemas


def multipart_body_schema(model: type[BaseModel], files: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` of a multipart form: `model`'s fields (a component, as with
    `json_body_schema`) beside the file parts `files` (name → schema)."""
    _DOCUMENTED[model.__name__] = model
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "allOf": [
                            {"$ref": f"#/components/schemas/{model.__name__}"},
                            {"type": "object", "properties": files},
                        ]
                    }
                }
            },
        }
    }
