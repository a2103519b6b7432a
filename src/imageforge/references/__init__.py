"""Everything that fetches a URL someone else chose, without becoming an SSRF proxy.

- `addresses.py`: which addresses a request may reach (classification, allow-lists,
  resolution);
- `transport.py`: the pinned connection (resolve and check once, connect to that address);
- `outbound.py`: `OutboundClient`, the guarded HTTP client: a capped GET that follows
  checked redirects, a POST that follows none;
- `pinned_aiohttp.py`: the same pinning for aiohttp sessions;
- `errors.py`: `OutboundError`, one failure type with a `kind`;
- `images.py`: checks on untrusted image bytes, and their decode reduced to the task's size;
- `budget.py`: `PixelBudget`, the decoded pixels a process holds at once;
- `fetcher.py`: a task's reference images (`image_urls`), through the above.

Every connection to such a URL is decided by an `AddressPolicy` and pinned to the address it
checked: the worker's reference fetcher (and callbacks, through `OutboundClient.post`) on
httpcore, the upstream engines' downloads of the images their upstreams link to on aiohttp
(`pinned_aiohttp.py`, not imported here: aiohttp comes with those engines' extras).
This package knows nothing of tasks, engines or the database.
"""

from __future__ import annotations

from imageforge.references.addresses import AddressPolicy, classify_address
from imageforge.references.budget import PixelBudget
from imageforge.references.errors import OutboundError
from imageforge.references.fetcher import FetchLimits, ReferenceFetcher, ReferenceFetchError
from imageforge.references.images import ALLOWED_FORMATS, ReferenceImage
from imageforge.references.outbound import Answer, Fetched, OutboundClient, Timeouts

__all__ = [
    "ALLOWED_FORMATS",
    "AddressPolicy",
    "Answer",
    "FetchLimits",
    "Fetched",
    "OutboundClient",
    "OutboundError",
    "PixelBudget",
    "ReferenceFetchError",
    "ReferenceFetcher",
    "ReferenceImage",
    "Timeouts",
    "classify_address",
]
