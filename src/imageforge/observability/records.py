"""One answered request as the observing middleware saw it, for the request log and the
request metrics.

A plain tuple, built once per request and handed to both: the cheapest thing to build and
to keep until they read it, in batches (`request_log`, `request_tally`). Its fields, in
order: the wall-clock time it ended, method, route template, status, seconds taken,
request id, key id, task id, and the prompt (None unless the log is asked for prompts).
"""

from __future__ import annotations

RequestRecord = tuple[float, str, str, int, float, str, "str | None", "str | None", "str | None"]
