"""An incremental decoder of server-sent events (the WHATWG `text/event-stream` format).

Fed bytes as they arrive, it returns the events that are complete. No I/O here, so the sync
and async clients read a stream through the same decoder.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    #: The stream's last event id once this event is seen (what `Last-Event-ID` resumes from).
    id: str | None
    #: Reconnection delay the server asked for, in milliseconds.
    retry: int | None = None


class SSEDecoder:
    """Lines may end in CRLF, LF or CR; `:` starts a comment (a keep-alive); a blank line
    dispatches the event; an event without data is dropped, as browsers do."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self._saw_data = False
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        self._buffer += self._text.decode(chunk)
        events: list[ServerSentEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            end, width = cut
            line, self._buffer = self._buffer[:end], self._buffer[end + width :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._saw_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._saw_data:
            event = ServerSentEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self.last_event_id,
                retry=self._retry,
            )
        self._event, self._data, self._retry, self._saw_data = "", [], None, False
        return event


def _line_end(text: str) -> tuple[int, int] | None:
    """Where the first complete line ends and how wide its terminator is."""
    lf, cr = text.find("\n"), text.find("\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, 1)
    if cr + 1 == len(text):
        return None  # a CR at the end may be the first half of a CRLF
    return cr, 2 if text[cr + 1] == "\n" else 1
