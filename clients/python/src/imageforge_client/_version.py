"""The package's version, read by the build (`[tool.hatch.version]`) and sent as User-Agent."""

from __future__ import annotations

import platform

__version__ = "0.1.0"
USER_AGENT = f"imageforge-client/{__version__} python/{platform.python_version()}"
