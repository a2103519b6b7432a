"""Invalid JSON bodies: a 400 that says where (line, column) and what, in plain words."""

from __future__ import annotations

import pytest

from imageforge.api.json_errors import line_and_column, plain_json_problem
from tests.conftest import ApiHarness

CASES = [
    (b'{"model": "gpt-image-2", "prompt": nul}', "line 1, column 36", "a bare word"),
    (b"{model: 1}", "line 1, column 2", "a field name without double quotes"),
    (b'{"prompt": "x"} trailing', "line 1, column 17", "more text after the end"),
    (b'{"prompt": "a\nb"}', "line 1, column 14", "raw line break"),
]
#: Where only orjson (the create route's parser) can tell what is wrong.
CREATE_ONLY = [
    (b'{"model": "gpt-image-2",\n "prompt": "x",\n}', "line 2, column 15", "a comma before"),
    (b'{"model": "gpt-image-2", "prompt": "x"', "line 1, column 39", "ends before"),
    (b'{"n": NaN}', "line 1, column 7", "not a JSON value"),
]


async def _invalid_json_message(api: ApiHarness, key: str, path: str, body: bytes) -> str:
    response = await api.client.post(
        path,
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "body"
    message: str = error["message"]
    # The parsers' own jargon stays out of the answer.
    for jargon in ("invalid literal", "expected 'null'", "Expecting", "char "):
        assert jargon not in message, message
    return message


@pytest.mark.parametrize(("body", "where", "words"), CASES + CREATE_ONLY)
async def test_invalid_json_on_create_says_where_and_what(
    api: ApiHarness, key: str, body: bytes, where: str, words: str
) -> None:
    message = await _invalid_json_message(api, key, "/v1/image2/images", body)
    assert message.startswith(f"body: must be valid JSON ({where}: "), message
    assert words in message, message


@pytest.mark.parametrize(("body", "where"), [(body, where) for body, where, _ in CASES])
async def test_invalid_json_on_quote_reads_the_same(
    api: ApiHarness, key: str, body: bytes, where: str
) -> None:
    # The standard library parses this route's body: the same place, its own diagnosis.
    message = await _invalid_json_message(api, key, "/v1/image2/images/quote", body)
    assert message.startswith(f"body: must be valid JSON ({where}: "), message


def test_both_parsers_get_the_same_plain_words() -> None:
    assert plain_json_problem("trailing comma is not allowed") == plain_json_problem(
        "Illegal trailing comma before end of object"
    )
    assert plain_json_problem("unexpected end of data") == plain_json_problem(
        "EOF while parsing a value"
    )
    assert plain_json_problem("a message no parser writes yet") == (
        "a message no parser writes yet"
    )


def test_line_and_column_count_from_one() -> None:
    assert line_and_column("abc", 0) == (1, 1)
    assert line_and_column('{\n  "a": x}', 9) == (2, 8)
