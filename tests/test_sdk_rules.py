"""The SDK's pure rules: event-stream decoding, Retry-After, backoff, reading a server's
OpenAPI document, and mapping error answers to typed exceptions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from imageforge.api.app import create_app
from imageforge.settings import Settings
from imageforge_client import (
    APIStatusError,
    BadRequestError,
    Capabilities,
    IdempotencyInProgressError,
    ImageforgeClientError,
    PollSchedule,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TaskResult,
)
from imageforge_client._operations import require_completed
from imageforge_client._retry import RetryPolicy, retry_after_seconds
from imageforge_client._sse import SSEDecoder
from imageforge_client.errors import error_for_response


def test_events_split_anywhere_decode_the_same() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'id: 1\r\nevent: status\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b"id: 2\rdata: caf\xc3\xa9\r\r"
        b"retry: 1500\ndata: no event name\n\n"
        b"event: empty\n\n"
    )
    for cut in range(1, len(stream)):
        decoder = SSEDecoder()
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [(e.event, e.data, e.id) for e in events] == [
            ("status", '{"a":\n1}', "1"),
            ("message", "café", "2"),
            ("message", "no event name", "2"),
        ], cut
        assert events[2].retry == 1500 and decoder.last_event_id == "2"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now=lambda: now) == 7
    assert retry_after_seconds(" 0.5 ", now=lambda: now) == 0.5
    assert retry_after_seconds("Tue, 01 Dec 2026 12:00:30 GMT", now=lambda: now) == 30
    assert retry_after_seconds("Tuesday, 01-Dec-26 12:00:30 GMT", now=lambda: now) == 30
    assert retry_after_seconds("Tue, 01 Dec 2026 11:00:00 GMT", now=lambda: now) == 0
    assert retry_after_seconds("-3") == 0
    for unreadable in (None, "", "soon", "Tue, 99 Foo"):
        assert retry_after_seconds(unreadable) is None


def test_backoff_grows_to_its_cap_and_retries_stop_at_the_bound() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=4.0, max_wait=60)
    assert [policy.backoff(n, rand=lambda: 1.0) for n in range(5)] == [0.5, 1, 2, 4, 4]
    assert policy.backoff(2, rand=lambda: 0.0) == 1.5  # jitter takes off at most a quarter
    answer = httpx.Response(429, headers={"Retry-After": "2"})
    assert policy.delay_after_status(answer, 0) == 2
    assert policy.delay_after_status(answer, 3) is None
    assert policy.delay_after_status(httpx.Response(429, headers={"Retry-After": "61"}), 0) is None
    assert (
        policy.delay_after_error(2, rand=lambda: 1.0) == 2 and policy.delay_after_error(3) is None
    )


def test_polling_starts_near_a_second_and_settles_near_five() -> None:
    intervals = [PollSchedule().interval(n) for n in range(7)]
    assert intervals[0] == 1.0 and intervals[-1] == 5.0
    assert intervals == sorted(intervals)


def test_imageforge_openapi_lists_only_what_it_serves(tmp_path: Path) -> None:
    document = create_app(Settings(data_dir=tmp_path)).openapi()
    found = Capabilities.from_openapi(document)
    assert found.quote and found.usage and found.idempotency_keys
    # Whatever the server lists, the flags follow its paths, never a guess.
    paths = set(document["paths"])
    assert found.listing == ("/v1/tasks" in paths)
    assert found.cancel == ("/v1/result/{task_id}/cancel" in paths)
    assert found.events == ("/v1/result/{task_id}/events" in paths)


def test_openapi_documents_of_other_shapes() -> None:
    document: dict[str, Any] = {
        "paths": {
            "/v1/result/{id}": {"get": {"parameters": [{"name": "wait", "in": "query"}]}},
            "/v1/result/{id}/events": {"get": {}},
            "/v1/image2/images": {
                "post": {
                    "requestBody": {
                        "content": {"application/json": {"schema": {"$ref": "#/c/Body"}}}
                    }
                }
            },
        },
        "c": {"Body": {"properties": {"prompt": {}, "callback_url": {}}}},
    }
    assert Capabilities.from_openapi(document) == Capabilities(
        long_poll=True, events=True, callbacks=True
    )
    for nothing in (None, [], {"paths": []}, {"paths": {"/v1/tasks": "get"}}):
        assert Capabilities.from_openapi(nothing) == Capabilities()


def answer(status: int, body: Any = None, *, text: str | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://127.0.0.1/v1/result/x")
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


def test_error_answers_map_to_typed_errors_with_the_servers_words() -> None:
    detail = {"message": "size: bad", "param": "size", "code": "invalid_size", "type": "x"}
    error = error_for_response(answer(400, {"error": detail}))
    assert isinstance(error, BadRequestError)
    assert (error.message, error.param, error.code, error.type) == (
        "size: bad",
        "size",
        "invalid_size",
        "x",
    )
    assert str(error) == "400: size: bad"
    in_flight = error_for_response(answer(409, {"error": "in flight"}))
    assert isinstance(in_flight, IdempotencyInProgressError) and in_flight.message == "in flight"
    assert error_for_response(answer(404, {"detail": "Not Found"})).message == "Not Found"
    assert error_for_response(answer(502, text="<html>bad gateway</html>")).message == (
        "<html>bad gateway</html>"
    )
    assert type(error_for_response(answer(502, text=""))) is ServerError
    assert type(error_for_response(answer(503, {}))) is ServiceUnavailableError
    assert type(error_for_response(answer(418, {"message": "teapot"}))) is APIStatusError
    limited = error_for_response(
        httpx.Response(429, headers={"Retry-After": "3"}, request=httpx.Request("GET", "http://x"))
    )
    assert isinstance(limited, RateLimitError) and limited.retry_after == 3


def test_unknown_fields_are_kept_and_money_is_decimal() -> None:
    task = TaskResult.model_validate_json(
        b'{"id":"image_1","object":"image.generation","created":1,"model":"m",'
        b'"status":"completed","image_url":"http://x/1.png","amount":0.053,"eta":4}'
    )
    assert str(task.amount) == "0.053" and task.done
    assert task.model_extra == {"eta": 4}


@pytest.mark.parametrize("status", ["queued", "processing"])
def test_unfinished_tasks_are_not_done(status: str) -> None:
    assert not TaskResult(id="i", created=1, model="m", status=status).done


def test_a_completed_task_whose_image_is_past_retention_says_so() -> None:
    gone = TaskResult(id="t1", created=1, model="m", status="completed", expired=True)
    with pytest.raises(ImageforgeClientError, match="past retention"):
        require_completed(gone)
    kept = TaskResult(id="t2", created=1, model="m", status="completed", image_url="http://x/i")
    assert require_completed(kept) is kept
