"""How every process writes its log: readable lines, or one JSON object per line.

`log_format = "json"` makes every record (request lines and the rest) a JSON object with
`time`, `level`, `logger`, `message` and the record's structured `fields`, so a log
shipper needs no parsing rules.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from imageforge.observability.records import RequestRecord

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


_TEXT_MILLIS = tuple(f",{millis:03d}" for millis in range(1000))
_JSON_MILLIS = tuple(f".{millis:03d}+00:00" for millis in range(1000))


def milliseconds(seconds: float) -> float:
    """A duration in milliseconds to two places, as request lines give it (what
    `round(ms, 2)` gives, five times faster)."""
    return int(seconds * 100_000 + 0.5) / 100


class LineWriter:
    """Request lines handed straight to the process's log handler, formatted as its
    formatter would (the same layout, byte for byte), without a `LogRecord` each.

    The request's thread only queues its record (`records.py`); the handler formats it
    with the lines it writes anyway, when its batch is written. Through `logging`, a line
    cost three times what building it does; built on the request's path it still cost
    about 3 µs, 5 % of a poll. Only `configure_logging` makes one (it owns the handler);
    anything else embedding the app goes through `logging` (`request_log.RequestLog`
    without a writer)."""

    def __init__(self, handler: BatchingStreamHandler, *, json: bool, logger: str) -> None:
        self._handler = handler
        self._queue = handler.queue
        self._batch = handler.batch
        handler.render = self._json_line if json else self._text_line
        self._json = json
        self._logger = logger
        self._second = -1
        self._stamp = ""
        # The formatter's `,123` (text) or `.123+00:00` (JSON) after the second, made once.
        self._millis = _JSON_MILLIS if json else _TEXT_MILLIS
        self._prefix = f" INFO {logger}: "
        #: By (method, route, status): bounded, as those are (the metrics' labels).
        self._middles: dict[tuple[str, str, int], str] = {}

    def request_line(self, record: RequestRecord) -> None:
        """`request_log.RequestLog`'s line, queued as its record; formatted later."""
        queue = self._queue
        queue.append(record)
        if len(queue) >= self._batch:
            self._handler.flush()

    # What follows runs under the handler's lock (its flusher, or a flush), one at a time.

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            if self._json:
                self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp + self._millis[int((now - second) * 1000)]

    def _text_line(self, item: RequestRecord) -> str:
        now, method, route, status, duration_s, request_id, key_id, task_id, prompt = item
        # What repeats from line to line is made once: the level, logger, method, route and
        # status; `milliseconds` inlined (a call is a fifth of the line's cost).
        middle = self._middles.get((method, route, status))
        if middle is None:
            middle = self._middles[(method, route, status)] = (
                f"{self._prefix}{method} {route} {status} "
            )
        line = f"{self._time(now)}{middle}{int(duration_s * 100_000 + 0.5) / 100}ms id={request_id}"
        if key_id is not None:
            line += f" key={key_id}"
        if task_id is not None:
            line += f" task={task_id}"
        if prompt is not None:
            line += f" prompt={prompt!r}"
        return line

    def _json_line(self, item: RequestRecord) -> str:
        now, method, route, status, duration_s, request_id, key_id, task_id, prompt = item
        fields: dict[str, Any] = {
            "time": self._time(now),
            "level": "info",
            "logger": self._logger,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": milliseconds(duration_s),
            "request_id": request_id,
        }
        if key_id is not None:
            fields["key_id"] = key_id
        if task_id is not None:
            fields["task_id"] = task_id
        if prompt is not None:
            fields["prompt"] = prompt
        return orjson.dumps(fields, default=str).decode()


_line_handler: BatchingStreamHandler | None = None
_line_format = "text"


def line_writer(logger: str) -> LineWriter | None:
    """A direct writer for `logger`'s INFO lines when `configure_logging` set the handler
    up and nothing changed it since (else None: go through `logging`)."""
    if _line_handler is None or _line_handler not in logging.getLogger().handlers:
        return None
    return LineWriter(_line_handler, json=_line_format == "json", logger=logger)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root handler on stderr, in the chosen format; noisy libraries kept quiet."""
    global _line_handler, _line_format
    handler = BatchingStreamHandler(sys.stderr)
    _line_handler, _line_format = handler, log_format
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = max(logging.WARNING, logging.getLevelName(level.upper()))
    # Migrations announce every step at INFO; only problems are worth a line at start-up.
    # The HTTP clients log every request at INFO: one line per upstream call on top of the
    # task's own, with the upstream's URL in it. uvicorn's own access log is off (the
    # request log replaces it), and its error lines follow this format too.
    for name in ("alembic", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"):
        logging.getLogger(name).setLevel(quiet)
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def _unrendered(record: RequestRecord) -> str:
    return repr(record)  # only a handler no LineWriter was made for is given records


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes INFO lines (request lines, mostly) in batches.

    A system call per request line cost as much as the rest of the line. Lines at INFO and
    below are gathered and written together, at most `interval` seconds later (a daemon
    thread flushes) or as soon as `batch` of them wait; a WARNING or worse is written at
    once, after what waits, so the order holds and problems are never late.

    `queue` holds lines formatted already and `LineWriter`'s request records still to
    format (`render`, its format, makes their lines); appending to it and taking from it are safe
    from any thread without a lock, so a request line costs its request one append."""

    def __init__(self, stream: Any, *, interval: float = 0.2, batch: int = 256) -> None:
        super().__init__(stream)
        self.queue: deque[str | RequestRecord] = deque()
        #: How a queued request record becomes its line (the `LineWriter`'s format).
        self.render: Callable[[RequestRecord], str] = _unrendered
        self.batch = batch
        self._interval = interval
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_often, name="log flusher", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.queue.append(line)
        if record.levelno >= logging.WARNING or len(self.queue) >= self.batch:
            self.flush()

    def _write_pending(self) -> None:
        queue = self.queue
        if not queue:
            return
        take = queue.popleft
        render = self.render
        lines = []
        for _ in range(len(queue)):  # what waits now; later lines wait for the next flush
            item = take()
            lines.append(item if isinstance(item, str) else render(item))
        lines.append("")
        try:
            self.stream.write(self.terminator.join(lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream: nothing better to do with a log line

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_often(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()
