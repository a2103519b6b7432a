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
from datetime import UTC, datetime
from typing import Any

import orjson

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


class LineWriter:
    """Request lines written straight to the process's log handler, formatted as its
    formatter would (the same layout, byte for byte), without a `LogRecord` each: through
    `logging`, a line cost three times what building it does, a measurable share of a poll.
    Only `configure_logging` makes one (it owns the handler); anything else embedding the
    app goes through `logging` (`request_log.RequestLog` without a writer)."""

    def __init__(self, handler: BatchingStreamHandler, *, json: bool, logger: str) -> None:
        self._handler = handler
        self._json = json
        self._logger = logger
        self._second = -1
        self._stamp = ""

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            if self._json:
                self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        if self._json:
            return f"{self._stamp}.{millis:03d}+00:00"
        return f"{self._stamp},{millis:03d}"

    def request_line(
        self,
        method: str,
        route: str,
        status: int,
        duration_s: float,
        request_id: str,
        key_id: str | None,
        task_id: str | None,
        prompt: str | None,
    ) -> None:
        """`request_log.RequestLog`'s line, as its record would be formatted."""
        if not self._json:
            line = (
                f"{self._time()} INFO {self._logger}: {method} {route} {status} "
                f"{round(duration_s * 1000, 2)}ms id={request_id}"
            )
            if key_id is not None:
                line += f" key={key_id}"
            if task_id is not None:
                line += f" task={task_id}"
            if prompt is not None:
                line += f" prompt={prompt!r}"
            self._handler.write_line(line)
            return
        fields: dict[str, Any] = {
            "time": self._time(),
            "level": "info",
            "logger": self._logger,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration_s * 1000, 2),
            "request_id": request_id,
        }
        if key_id is not None:
            fields["key_id"] = key_id
        if task_id is not None:
            fields["task_id"] = task_id
        if prompt is not None:
            fields["prompt"] = prompt
        self._handler.write_line(orjson.dumps(fields, default=str).decode())


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


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes INFO lines (request lines, mostly) in batches.

    A system call per request line cost as much as the rest of the line. Lines at INFO and
    below are gathered and written together, at most `interval` seconds later (a daemon
    thread flushes) or as soon as `batch` of them wait; a WARNING or worse is written at
    once, after what waits, so the order holds and problems are never late."""

    def __init__(self, stream: Any, *, interval: float = 0.2, batch: int = 256) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._batch = batch
        self._interval = interval
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_often, name="log flusher", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            if record.levelno < logging.WARNING and len(self._pending) < self._batch:
                return
            self._write_pending()

    def write_line(self, line: str) -> None:
        """A line formatted already (`LineWriter`), in turn with the records."""
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line + self.terminator)
            if len(self._pending) >= self._batch:
                self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            text, self._pending = "".join(self._pending), []
            try:
                self.stream.write(text)
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
