"""What a server offers beyond the GPT Image 2 contract, read from its `/openapi.json`.

The client speaks only the contract (create, query) unless the server's OpenAPI document lists
an extension, so it works against any GPT Image 2 task API. A server without a readable
document offers no extensions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: `{task_id}`, `{id}`: servers name the path parameter as they like.
_PARAMETER = re.compile(r"\{[^/{}]+\}")

CREATE_PATH = "/v1/image2/images"
RESULT_PATH = "/v1/result/{}"


@dataclass(frozen=True)
class Capabilities:
    """One flag per extension; all False for a server that lists none."""

    #: `GET /v1/result/{id}?wait=N` holds until the task is terminal or N seconds pass.
    long_poll: bool = False
    #: `GET /v1/result/{id}/events`: server-sent events for status and progress.
    events: bool = False
    #: `POST /v1/result/{id}/cancel`.
    cancel: bool = False
    #: `GET /v1/tasks`: the caller's tasks, newest first, paged with `after=`.
    listing: bool = False
    #: `POST /v1/image2/images/quote`: validate and price without creating.
    quote: bool = False
    #: `GET /v1/usage`: balance and spend.
    usage: bool = False
    #: Create honours `Idempotency-Key`, so a create whose answer was lost can be resent.
    idempotency_keys: bool = False
    #: Create accepts `callback_url` (a signed webhook when the task ends).
    callbacks: bool = False

    @classmethod
    def from_openapi(cls, document: Any) -> Capabilities:
        if not isinstance(document, Mapping):
            return cls()
        raw_paths = document.get("paths")
        if not isinstance(raw_paths, Mapping):
            return cls()
        paths = {
            _PARAMETER.sub("{}", str(path)): item
            for path, item in raw_paths.items()
            if isinstance(item, Mapping)
        }

        def operation(path: str, method: str) -> Mapping[str, Any] | None:
            found = paths.get(path, {}).get(method)
            return found if isinstance(found, Mapping) else None

        result = operation(RESULT_PATH, "get")
        create = operation(CREATE_PATH, "post")
        return cls(
            long_poll=result is not None and "wait" in _parameter_names(result, "query"),
            events=operation(RESULT_PATH + "/events", "get") is not None,
            cancel=operation(RESULT_PATH + "/cancel", "post") is not None,
            listing=operation("/v1/tasks", "get") is not None,
            quote=operation(CREATE_PATH + "/quote", "post") is not None,
            usage=operation("/v1/usage", "get") is not None,
            idempotency_keys=create is not None
            and "idempotency-key" in _parameter_names(create, "header"),
            callbacks=create is not None and "callback_url" in _body_properties(create, document),
        )


def _parameter_names(operation: Mapping[str, Any], location: str) -> set[str]:
    names = set()
    for parameter in operation.get("parameters") or ():
        if isinstance(parameter, Mapping) and parameter.get("in") == location:
            names.add(str(parameter.get("name", "")).lower())
    return names


def _body_properties(operation: Mapping[str, Any], document: Mapping[str, Any]) -> set[str]:
    """Property names of the operation's JSON body, following one `$ref` into components."""
    try:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return set()
    schema = _resolve(schema, document)
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    return set(properties) if isinstance(properties, Mapping) else set()


def _resolve(schema: Any, document: Mapping[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = document
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node
