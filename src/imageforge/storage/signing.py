"""HMAC-signed, expiring links to stored images, served by the API's /files route.

Backends whose images are read through the API (local disk, memory) make their links
with `UrlSigner.files_url`; the /files route checks them with the same signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import quote

SECRET_FILE = "url-signing.key"
#: Where the API serves stored images.
FILES_PREFIX = "/files/"


def load_or_create_secret(data_dir: Path) -> bytes:
    """The signing secret lives in the data dir, generated on first start (mode 0600)."""
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    # O_EXCL: if two processes race on first start, the loser reads the winner's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    return secret


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, key: str, expires: int) -> str:
        return self._digest(key, expires).decode("ascii")

    def _digest(self, key: str, expires: int) -> bytes:
        # surrogatepass: a key from a link is whatever the client sent; it must sign (and
        # then not match), never raise.
        message = f"{key}\n{expires}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=")

    def files_url(self, key: str, *, base_url: str, expires: int) -> str:
        """`<base_url>/files/<key>?expires=…&signature=…`."""
        signature = self.signature(key, expires)
        return f"{base_url}{FILES_PREFIX}{quote(key)}?expires={expires}&signature={signature}"

    def is_valid(self, key: str, expires: int, signature: str) -> bool:
        """Whether `signature` is the one for `key` and `expires`. Compared as bytes:
        `compare_digest` refuses non-ASCII strings with TypeError, and a malformed
        signature is just a wrong one."""
        sent = signature.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(self._digest(key, expires), sent)
