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
from collections.abc import Callable
from typing import Any

from imageforge.observability.logs import LineWriter, milliseconds
from imageforge.observability.records import RequestRecord

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

    @property
    def prompts(self) -> bool:
        """Whether lines carry the prompt (the middleware puts it in the record then)."""
        return self._prompts

    @property
    def sink(self) -> Callable[[RequestRecord], None]:
        """What takes each record: the direct writer's queue where there is one (one call
        less a request), else `write`."""
        return self._writer.request_line if self._writer is not None else self.write

    def write(self, record: RequestRecord) -> None:
        """One request's line (`records.py`)."""
        if self._writer is not None:
            # The hot case: the record queued as it is, formatted later in a batch.
            self._writer.request_line(record)
            return
        _, method, route, status, seconds, request_id, key_id, task_id, prompt = record
        duration_ms = milliseconds(seconds)
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
        }
        text = f"{method} {route} {status} {duration_ms}ms id={request_id}"
        if key_id is not None:
            fields["key_id"] = key_id
            text += f" key={key_id}"
        if task_id is not None:
            fields["task_id"] = task_id
            text += f" task={task_id}"
        if prompt is not None:
            fields["prompt"] = prompt
            text += f" prompt={prompt!r}"
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        # makeRecord + handle: what `info` does, without looking up the caller's frame
        # (half the cost of a line, for a source location that is always this one).
        entry = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, text, (), None, extra={"fields": fields}
        )
        logger.handle(entry)
