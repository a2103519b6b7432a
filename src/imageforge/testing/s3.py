"""An S3-compatible server on loopback, for tests and benchmarks: moto's standalone one.

moto (a dev dependency) speaks the S3 protocol over HTTP: signed requests, multipart
uploads, ranges, listings, presigned links. It runs as its own process on a free port
of 127.0.0.1, so every client in the test (and every `imageforge` process it starts)
talks to it as to a real bucket. It does not check a presigned link's expiry, nor, by
default, credentials: `require_credentials()` turns checking on (until `reset()`).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import httpx

from imageforge.testing.processes import free_port

#: Credentials the test processes use; moto accepts any until told to check them.
ACCESS_KEY_ID = "imageforge-test"
SECRET_ACCESS_KEY = "imageforge-test-secret"


class MotoServer:
    """`python -m moto.server` on 127.0.0.1, ready once built; `close()` stops it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
            start_new_session=True,
        )
        self._client = httpx.Client(base_url=self.endpoint_url, timeout=10)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                if self._client.get("/moto-api/").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def create_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (a fresh name unless given); → its name."""
        name = name or f"imageforge-{secrets.token_hex(6)}"
        response = self._client.put(f"/{name}")
        response.raise_for_status()
        return name

    def make_public(self, bucket: str) -> None:
        """Let anyone GET the bucket's objects (a bucket policy, as for a CDN origin)."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                }
            ],
        }
        self._client.put(f"/{bucket}?policy", content=json.dumps(policy)).raise_for_status()

    def object_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in the bucket under `prefix`, read over the S3 API (unsigned)."""
        keys: list[str] = []
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            response = self._client.get(f"/{bucket}", params=params)
            response.raise_for_status()
            text = response.text
            keys.extend(_between_all(text, "<Key>", "</Key>"))
            tokens = _between_all(text, "<NextContinuationToken>", "</NextContinuationToken>")
            if not tokens:
                return keys
            token = tokens[0]

    def require_credentials(self) -> None:
        """From now on, refuse requests whose access key moto's IAM does not know."""
        self._client.post("/moto-api/reset-auth", content=b"0").raise_for_status()

    def reset(self) -> None:
        """Forget every bucket and object, and stop checking credentials."""
        self._client.post("/moto-api/reset-auth", content=b"inf").raise_for_status()
        self._client.post("/moto-api/reset").raise_for_status()

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """The environment an `imageforge` process needs to keep its images here."""
        return {
            "IMAGEFORGE_STORAGE": "s3",
            "IMAGEFORGE_S3_BUCKET": bucket,
            "IMAGEFORGE_S3_ENDPOINT_URL": self.endpoint_url,
            "IMAGEFORGE_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            **extra,
        }

    def close(self) -> None:
        """Stop the server (again is a no-op)."""
        self._client.close()
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _between_all(text: str, start: str, end: str) -> list[str]:
    found = []
    position = 0
    while (begin := text.find(start, position)) != -1:
        stop = text.find(end, begin)
        found.append(html.unescape(text[begin + len(start) : stop]))
        position = stop
    return found


def static_credentials() -> dict[str, object]:
    """The test credentials as an obstore credential (for `S3Storage(credentials=…)`)."""
    return {
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "token": None,
        "expires_at": None,
    }
