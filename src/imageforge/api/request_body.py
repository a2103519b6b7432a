"""Parse a JSON body into a wire model by hand, after authentication.

Used by the create route so that a request without a valid key gets its 401
before anything looks at the body, and so the hottest write path skips
FastAPI's body dependency. Errors read exactly like FastAPI's validation errors.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from imageforge.api.errors import describe_validation_error
from imageforge.api.json_errors import invalid_json_message
from imageforge.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)


async def parse_json_body(request: Request, model: type[Model]) -> Model:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("body: a JSON object is required", param="body")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = invalid_json_message(exc.msg, exc.lineno, exc.colno)
        raise InvalidRequest(message, param="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body: must be a JSON object", param="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        first["loc"] = ("body", *tuple(first.get("loc", ())))
        param, message = describe_validation_error(first)
        raise InvalidRequest(message, param=param) from None


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that parses its body with `parse_json_body`."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
