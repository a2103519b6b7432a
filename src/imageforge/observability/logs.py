"""How every process writes its log: readable lines, or one JSON object per line.

`log_format = "json"` makes every record (request lines and the rest) a JSON object with
`time`, `level`, `logger`, `message` and the record's structured `fields`, so a log
shipper needs no parsing rules.
"""

from __future__ import annotations

import logging
import sys
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


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root handler on stderr, in the chosen format; noisy libraries kept quiet."""
    handler = logging.StreamHandler(sys.stderr)
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
