"""Everything that fetches a URL someone else chose, without becoming an SSRF proxy.

- `addresses.py`: which addresses a request may reach (classification, allow-lists,
  resolution);
- `transport.py`: the pinned connection (resolve and check once, connect to that address);
- `outbound.py`: `OutboundClient`, the one guarded HTTP client: a capped GET that follows
  checked redirects, a POST that follows none;
- `images.py`: checks on untrusted image bytes;
- `fetcher.py`: a task's reference images (`image_urls`), through the above.

The worker's reference fetcher, the upstream engines' downloads of the images their upstreams
link to, and callbacks all go through `OutboundClient`, each with its own `AddressPolicy`.
This package knows nothing of tasks, engines or the database.
"""

from __future__ import annotations

from imageforge.references.addresses import AddressPolicy, classify_address
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
    "ReferenceFetchError",
    "ReferenceFetcher",
    "ReferenceImage",
    "Timeouts",
    "classify_address",
]
