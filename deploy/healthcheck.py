#!/usr/bin/env python3
"""Exit 0 when the API answers GET /readyz with 200 (database reachable, schema current,
storage writable), else 1.

The container health check of an API node: `imageforge-healthcheck [URL]` (default
http://127.0.0.1:8000/readyz). The standard library only, so it needs nothing the
slim image lacks.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/readyz"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
