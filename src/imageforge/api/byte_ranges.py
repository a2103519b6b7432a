"""The `Range` header of a download: one byte range, as RFC 9110 §14 defines it.

Only a single range is served as 206; anything else the header may say (several
ranges, other units, bad syntax, an `If-Range` that no longer matches) is answered
with the whole image, as the RFC allows. A range that starts past the end is a 416.
"""

from __future__ import annotations

import re

from imageforge.errors import ImageforgeError

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ImageforgeError):
    status_code = 416
    error_type = "invalid_request_error"
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"Range: must start before the end of the image ({size} bytes)", param="Range"
        )
        self.headers = {"Content-Range": f"bytes */{size}"}


def requested_range(
    header: str | None, size: int, *, if_range: str | None, etag: str
) -> tuple[int, int] | None:
    """(start, end exclusive) of the bytes to send, or None for the whole image."""
    if header is None or (if_range is not None and if_range.strip() != etag):
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        # A suffix: the last N bytes.
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end
