"""One line per HTTP request, written by the observing middleware (`api/observe.py`).

The line says what an operator needs to find a request again: method, route template (not
the path, so ids do not make every line unique), status, duration, the key id and task id
where there is one, and the request id the client sent or was given. Never a key or a
secret; the prompt only when `log_prompts` asks for it (prompts are the users' content).

Records go to the `imageforge.requests` logger with the fields in `record.fields`, so that
the JSON formatter (`logs.py`) writes them as keys and the text one reads them from the
message.
"""

from __future__ import annotations

import logging
from typing import Any

from imageforge.observability.logs import LineWriter, milliseconds

LOGGER_NAME = "imageforge.requests"


class RequestLog:
    def __init__(
        self,
        *,
        prompts: bool = False,
        logger: logging.Logger | None = None,
        writer: LineWriter | None = None,
    ) -> None:
        """`writer`: write lines straight to the log handler (`logs.line_writer`);
        without one they go through `logging`."""
        self._prompts = prompts
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._writer = writer

    @property
    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(
        self,
        method: str,
        route: str,
        status: int,
        duration_s: float,
        request_id: str,
        state: dict[str, Any],
    ) -> None:
        """`state`: what the endpoint recorded in the ASGI scope's state (`key_id`,
        `task_id`, `prompt`)."""
        if self._writer is not None:
            # The hot case: one line built in one go, no record and no fields dict.
            self._writer.request_line(
                method,
                route,
                status,
                duration_s,
                request_id,
                state.get("key_id"),
                state.get("task_id"),
                state.get("prompt") if self._prompts else None,
            )
            return
        duration_ms = milliseconds(duration_s)
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
        }
        text = f"{method} {route} {status} {duration_ms}ms id={request_id}"
        key_id = state.get("key_id")
        if key_id is not None:
            fields["key_id"] = key_id
            text += f" key={key_id}"
        task_id = state.get("task_id")
        if task_id is not None:
            fields["task_id"] = task_id
            text += f" task={task_id}"
        if self._prompts:
            prompt = state.get("prompt")
            if prompt is not None:
                fields["prompt"] = prompt
                text += f" prompt={prompt!r}"
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        # makeRecord + handle: what `info` does, without looking up the caller's frame
        # (half the cost of a line, for a source location that is always this one).
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, text, (), None, extra={"fields": fields}
        )
        logger.handle(record)
