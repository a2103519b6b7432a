"""The OpenAPI document states every status and constraint the server enforces."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imageforge.settings import ModelConfig
from tests.conftest import CREATE_BODY_ROUTES, ApiHarness, make_settings, start_harness

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture
async def documented(tmp_path: Path) -> AsyncIterator[tuple[ApiHarness, dict[str, Any]]]:
    settings = make_settings(
        tmp_path / "data", models={"house-style": ModelConfig(max_references=20)}
    )
    lifespan, harness = await start_harness(settings, run_worker=False)
    try:
        document = (await harness.client.get("/openapi.json")).json()
        yield harness, document
    finally:
        await harness.client.aclose()
        await lifespan.__aexit__(None, None, None)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def branch(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    """The `kind` branch of an optional field's `anyOf`."""
    found: dict[str, Any] = next(b for b in schema.get("anyOf", [schema]) if b["type"] == kind)
    return found


async def test_the_files_route_documents_each_answer_with_the_error_body(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    responses = document["paths"]["/files/{key}"]["get"]["responses"]
    assert set(responses) >= {"200", "206", "400", "403", "404", "410", "416"}
    for status in ("400", "403", "404", "410", "416"):
        assert responses[status]["content"]["application/json"]["schema"] == ERROR_SCHEMA
    assert responses["404"]["content"]["application/json"]["example"]["error"]["code"] == (
        "file_not_found"
    )
    for status in ("200", "206"):
        assert set(responses[status]["content"]) == {"image/png", "image/jpeg", "image/webp"}


async def test_every_operation_with_a_body_documents_the_body_guards_answers(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    with_bodies = [(p, op) for p, _, op in operations(document) if "requestBody" in op]
    assert {p for p, _ in with_bodies} >= set(CREATE_BODY_ROUTES)
    for path, operation in with_bodies:
        for status in ("400", "408", "413"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == (
                ERROR_SCHEMA
            ), (path, status)


async def test_create_and_quote_document_one_body_and_no_validation_shapes_of_fastapi(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    for path in CREATE_BODY_ROUTES:
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/CreateImageRequest"
        }
        assert operation["security"] == [{"ApiKey": []}]
        assert set(operation["responses"]) >= {"200", "400", "401", "408", "413", "429", "503"}
    assert "422" not in document["paths"]["/v1/image2/images/quote"]["post"]["responses"]
    assert not {"HTTPValidationError", "ValidationError"} & set(document["components"]["schemas"])


async def test_the_create_body_declares_its_constraints(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    body = document["components"]["schemas"]["CreateImageRequest"]
    properties = body["properties"]
    assert set(body["required"]) == {"model", "prompt"}
    assert properties["model"]["enum"] == ["gpt-image-2", "gpt-image-2-r", "house-style"]
    prompt = properties["prompt"]
    assert (prompt["minLength"], prompt["maxLength"], prompt["pattern"]) == (1, 32_000, r"\S")
    urls = branch(properties["image_urls"], "array")
    assert urls["maxItems"] == 20  # the most any configured model takes
    item = urls["items"]
    assert item["type"] == "string" and item["format"] == "uri"
    assert item["minLength"] >= 1 and item["maxLength"] == 2048
    assert re.search(item["pattern"], "https://example.com/a.png")
    for refused in ("", "ftp://x/a.png", "https://u:p@example.com/a.png", "https://a b/c"):
        assert not re.search(item["pattern"], refused), refused
    size = branch(properties["size"], "string")
    assert re.search(size["pattern"], " 1024x1536 ") and not re.search(size["pattern"], "1024*1536")


async def test_the_rules_between_fields_are_in_the_document(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    rules = document["components"]["schemas"]["CreateImageRequest"]["allOf"]
    by_model = {
        rule["if"]["properties"]["model"]["const"]: rule["then"]["properties"]
        for rule in rules
        if "model" in rule["if"].get("properties", {})
    }
    assert set(by_model) == {"gpt-image-2", "gpt-image-2-r", "house-style"}
    assert branch(by_model["gpt-image-2"]["image_urls"], "array")["maxItems"] == 6
    assert branch(by_model["gpt-image-2-r"]["image_urls"], "array")["maxItems"] == 16
    assert by_model["gpt-image-2-r"]["resolution"]["enum"] == ["1k", None]
    assert by_model["gpt-image-2"]["resolution"]["enum"] == ["1k", "2k", "4k", None]
    needs_ratio = [rule for rule in rules if rule["then"].get("required") == ["ratio"]]
    four_k = [
        rule for rule in rules if "enum" in rule["then"].get("properties", {}).get("ratio", {})
    ]
    assert len(needs_ratio) == 1 and len(four_k) == 1
    assert set(four_k[0]["then"]["properties"]["ratio"]["enum"]) == {
        "16:9",
        "9:16",
        "2:1",
        "1:2",
        "21:9",
        "9:21",
    }


async def test_the_idempotency_key_header_is_documented_as_enforced(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    api, document = documented
    [header] = document["paths"]["/v1/image2/images"]["post"]["parameters"]
    schema = header["schema"]
    assert (schema["minLength"], schema["maxLength"]) == (1, 255)
    assert re.fullmatch(schema["pattern"], "a-UUID_like~key") and not re.search(
        schema["pattern"], "with space"
    )
    key = await api.new_key()
    for refused in ("", "with space", "x" * 256, "tab\tin"):
        response = await api.client.post(
            "/v1/image2/images",
            json={"model": "gpt-image-2", "prompt": "x"},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": refused},
        )
        assert response.status_code == 400, refused
        assert response.json()["error"]["param"] == "Idempotency-Key"


# One body per declared constraint, breaking only that one: the server refuses each.
SCHEMA_VIOLATIONS = [
    ({"model": "dall-e-9"}, "model"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": " \t\n"}, "prompt"),
    ({"prompt": "x" * 32_001}, "prompt"),
    ({"quality": "ultra"}, "quality"),
    ({"ratio": "7:5"}, "ratio"),
    ({"resolution": "8k", "ratio": "1:1"}, "resolution"),
    ({"size": "1024*1024"}, "size"),
    ({"image_urls": [""]}, "image_urls[0]"),
    ({"image_urls": ["ftp://example.com/a.png"]}, "image_urls[0]"),
    ({"image_urls": ["https://u:p@example.com/a.png"]}, "image_urls[0]"),
    ({"image_urls": ["https://example.com/" + "a" * 2048]}, "image_urls[0]"),
    ({"model": "house-style", "image_urls": ["https://example.com/a.png"] * 21}, "image_urls"),
    # The rules that tie fields together, stated with if/then.
    ({"image_urls": ["https://example.com/a.png"] * 7}, "image_urls"),
    ({"model": "gpt-image-2-r", "resolution": "2k", "ratio": "1:1"}, "resolution"),
    ({"resolution": "2k"}, "ratio"),
    ({"resolution": "4k", "ratio": "1:1"}, "resolution"),
]


@pytest.mark.parametrize("path", CREATE_BODY_ROUTES)
@pytest.mark.parametrize(("fields", "param"), SCHEMA_VIOLATIONS)
async def test_a_body_the_document_forbids_is_refused(
    documented: tuple[ApiHarness, dict[str, Any]], path: str, fields: dict[str, Any], param: str
) -> None:
    api, _ = documented
    key = await api.new_key()
    response = await api.post_create_body(path, key, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_the_openai_routes_document_their_bodies_answers_and_openai_error_words(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    paths = document["paths"]
    generations = paths["/v1/images/generations"]["post"]
    edits = paths["/v1/images/edits"]["post"]
    assert generations["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImageGenerationRequest"
    }
    form = edits["requestBody"]["content"]["multipart/form-data"]["schema"]["allOf"]
    assert form[0] == {"$ref": "#/components/schemas/ImageEditForm"}
    assert set(form[1]["properties"]) == {"image", "image[]", "mask"}
    assert form[1]["properties"]["image[]"]["maxItems"] == 16
    for operation in (generations, edits):
        answers = operation["responses"]
        assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
        assert set(answers) >= {"400", "401", "413", "422", "429", "500", "503", "504"}
        assert answers["401"]["content"]["application/json"]["example"]["error"]["type"] == (
            "invalid_request_error"
        )
        assert answers["429"]["content"]["application/json"]["example"]["error"]["type"] == (
            "insufficient_quota"
        )
        assert [p["name"] for p in operation["parameters"]] == ["Idempotency-Key"]
    assert "67,108,864" in str(edits["responses"]["413"])
    listed = paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/ModelList"}
    assert "model_not_found" in str(paths["/v1/models/{model_id}"]["get"]["responses"]["404"])


async def test_the_lifecycle_routes_are_documented(
    documented: tuple[ApiHarness, dict[str, Any]],
) -> None:
    _, document = documented
    paths = document["paths"]
    poll = paths["/v1/result/{task_id}"]["get"]
    (wait,) = [p for p in poll["parameters"] if p["name"] == "wait"]
    assert wait["in"] == "query" and (wait["schema"]["minimum"], wait["schema"]["maximum"]) == (
        1,
        60,
    )
    events = paths["/v1/result/{task_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert any(p["name"] == "Last-Event-ID" for p in events["parameters"])
    assert "post" in paths["/v1/result/{task_id}/cancel"]
    assert "get" in paths["/v1/result/{task_id}/deliveries"]
    listing = paths["/v1/tasks"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"status", "model", "limit", "after"}
    create = document["components"]["schemas"]["CreateImageRequest"]["properties"]
    assert "callback_url" in create
    assert "progress" in document["components"]["schemas"]["TaskResult"]["properties"]
    for path in ("/v1/result/{task_id}/cancel", "/v1/result/{task_id}/deliveries"):
        for operation in paths[path].values():
            assert "404" in operation["responses"]
