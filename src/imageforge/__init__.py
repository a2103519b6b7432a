"""imageforge: a self-hosted server for the GPT Image 2 asynchronous task API."""

from __future__ import annotations

__version__ = "0.1.0"
