"""Why a request body is not JSON, in words a client's developer can act on.

Two parsers read bodies: orjson (the create route) and the standard library (routes whose
body FastAPI parses). Their messages are terse and differ ("invalid literal, expected
'null'", "Expecting value"), so both are mapped here to one plain description, and the
place is given as line and column.
"""

from __future__ import annotations

#: (what the parser's message contains, what it means), first match wins. Keys are
#: lower-case fragments of orjson's and the standard library's messages.
_PLAIN_WORDS: tuple[tuple[str, str], ...] = (
    (
        "invalid literal",
        "a bare word; JSON knows only true, false and null, and strings need double quotes",
    ),
    ("trailing comma", "a comma before a closing bracket or brace"),
    ("unexpected end of data", 'the body ends before the JSON does (a missing }, ] or ")'),
    ("eof while parsing", 'the body ends before the JSON does (a missing }, ] or ")'),
    ("unterminated string", 'a string that is never closed (a missing ")'),
    ("expected a string key", "a field name without double quotes"),
    ("property name enclosed in double quotes", "a field name without double quotes"),
    ("expected ':'", "a missing colon between a field name and its value"),
    ("':' delimiter", "a missing colon between a field name and its value"),
    ("expected ',' or '}'", "a missing comma between fields, or a missing }"),
    ("expected ',' or ']'", "a missing comma between array items, or a missing ]"),
    ("',' delimiter", "a missing comma between two values"),
    ("unexpected content after document", "more text after the end of the JSON value"),
    ("extra data", "more text after the end of the JSON value"),
    ("escape", 'a backslash escape that JSON does not have (use \\\\, \\", \\n, \\uXXXX, …)'),
    (
        "control character",
        "a raw line break or control character inside a string; write it as \\n, \\t or \\uXXXX",
    ),
    ("leading zero", "a number with a leading zero"),
    ("utf-8", "bytes that are not UTF-8 text"),
    (
        "expected a json value",
        "something that is not a JSON value (a string, number, object, "
        "array, true, false or null; NaN and Infinity are not JSON)",
    ),
    (
        "expecting value",
        "something that is not a JSON value (a string, number, object, "
        "array, true, false or null; NaN and Infinity are not JSON)",
    ),
)


def plain_json_problem(parser_message: str) -> str:
    """The parser's message in plain words; an unknown message is passed on as it is."""
    lowered = parser_message.lower()
    for fragment, words in _PLAIN_WORDS:
        if fragment in lowered:
            return words
    return parser_message


def line_and_column(document: str | bytes, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset (bytes count as characters)."""
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    before = text[: max(0, position)]
    line = before.count("\n") + 1
    return line, position - (before.rfind("\n") + 1) + 1


def invalid_json_message(parser_message: str, line: int, column: int) -> str:
    """`body: must be valid JSON (line L, column C: <plain words>)`."""
    return (
        f"body: must be valid JSON (line {line}, column {column}: "
        f"{plain_json_problem(parser_message)})"
    )
