"""Images in an S3-compatible bucket: AWS S3, MinIO, Cloudflare R2, Ceph, SeaweedFS…

So that API nodes and workers on different machines share images without a shared
disk. The client is obstore (Python bindings of Rust's `object_store`, the crate
behind DataFusion and Delta Lake): its calls run on its own runtime and are awaited
on the event loop without a thread per call, large images are uploaded in parts, and
a presigned link is a local computation (~13 µs, ~24 µs with the credential provider
below, measured on a 2-core machine; aiobotocore's `generate_presigned_url` took
270 µs and is a coroutine, which `url_for` on the poll path cannot await).
Credentials come from botocore's chain (`aws_credentials.py`).

A PUT that returned is durable, and an object is never visible half-written (a
multipart upload appears only when it completes), so the runner's "store, then
complete" order holds as on disk: a worker killed in between leaves an orphan, which
the janitor removes like any other.

Links (`s3_links`):
- `presigned`: a GET presigned for the link's lifetime. Polls of one task reuse the
  link signed in the last `LINK_REUSE_SECONDS`, so a poll rarely pays for a signature.
  A link signed with temporary credentials (roles, SSO) also stops working when those
  credentials expire: S3's rule.
- `proxy`: the API's signed /files link; the route streams the object from the bucket,
  which stays private.
- `public`: `<public base URL>/<prefix><key>`, for a bucket served by a CDN.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlsplit

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from imageforge.settings import MAX_PRESIGNED_SECONDS
from imageforge.storage.aws_credentials import (
    NO_CREDENTIALS,
    NO_CREDENTIALS_HELP,
    AwsCredentialChain,
)
from imageforge.storage.base import (
    LINK_REUSE_SECONDS,
    READ_CHUNK_BYTES,
    StoredImage,
    check_key,
    content_type_for,
)
from imageforge.storage.signing import UrlSigner

if TYPE_CHECKING:
    from obstore.store import S3CredentialProvider

LinkMode = Literal["presigned", "proxy", "public"]
#: S3's smallest part (except the last); images up to the threshold go in one PUT.
MIN_PART_BYTES = 5 * 1024 * 1024
#: Most presigned links kept for reuse; beyond it links are signed per call.
MAX_REUSED_LINKS = 100_000
_ERROR_CODE = re.compile(r"<Code>([^<]+)</Code>")


@dataclass(frozen=True)
class S3Options:
    bucket: str
    #: Keys are stored under it (`a/b`, no slashes at either end; "" for none).
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    #: None: path style with an endpoint URL, virtual-hosted on AWS.
    path_style: bool | None = None
    links: LinkMode = "presigned"
    public_base_url: str | None = None
    multipart_threshold_bytes: int = 8 * 1024 * 1024

    @property
    def location(self) -> str:
        """Where the images are, in words for messages: `s3://bucket/prefix/ at endpoint`."""
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        return f"{where} at {self.endpoint_url or 'AWS S3'}"


def _endpoint(options: S3Options, path_style: bool) -> str | None:
    """The endpoint obstore wants: virtual-hosted style needs the bucket in the host."""
    if options.endpoint_url is None or path_style:
        return options.endpoint_url
    parts = urlsplit(options.endpoint_url)
    return f"{parts.scheme}://{options.bucket}.{parts.netloc}{parts.path}"


class S3Storage:
    def __init__(
        self,
        options: S3Options,
        signer: UrlSigner,
        *,
        credentials: S3CredentialProvider | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Builds the client; connects to nothing until the first call. `credentials`
        replaces botocore's chain (tests); `clock` dates reused links."""
        if options.prefix:
            try:
                check_key(options.prefix)
            except ValueError:
                raise ValueError(
                    f"s3_prefix: parts must not be empty, '.' or '..' (got {options.prefix!r})"
                ) from None
        if options.links == "public" and not options.public_base_url:
            raise ValueError("s3_public_base_url: required when s3_links = public")
        self.options = options
        self._signer = signer
        self._clock = clock
        chain = AwsCredentialChain() if credentials is None else None
        region = options.region or (chain.region() if chain else None) or "us-east-1"
        path_style = options.path_style
        if path_style is None:
            path_style = options.endpoint_url is not None
        self._public_prefix = (
            f"{options.public_base_url}/{quote(options.prefix)}/"
            if options.prefix
            else f"{options.public_base_url}/"
        )
        self._store = S3Store(
            options.bucket,
            prefix=options.prefix or None,
            config={
                "region": region,
                "virtual_hosted_style_request": not path_style,
                **({"endpoint": e} if (e := _endpoint(options, path_style)) else {}),
            },
            client_options={
                "allow_http": (options.endpoint_url or "").startswith("http://"),
                "connect_timeout": timedelta(seconds=5),
                "timeout": timedelta(seconds=60),
            },
            # A call gives up within ~20 s: an unreachable endpoint is reported at
            # start-up instead of after obstore's default three minutes.
            retry_config={
                "max_retries": 3,
                "retry_timeout": timedelta(seconds=20),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=2),
                    "base": 2,
                },
            },
            credential_provider=credentials or chain,
        )
        # key → (the expiry it was signed for, the link).
        self._links: dict[str, tuple[int, str]] = {}
        self._links_window = 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        check_key(key)
        try:
            await obstore.put_async(
                self._store,
                key,
                data,
                attributes={"Content-Type": content_type},
                chunk_size=self.options.multipart_threshold_bytes,
            )
        except (BaseError, OSError) as exc:
            raise self._error(exc, "writing", key) from exc

    async def open(self, key: str) -> StoredImage | None:
        try:
            check_key(key)
        except ValueError:
            return None
        try:
            meta = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise self._error(exc, "reading", key) from exc
        etag = meta["e_tag"] or f'"{int(meta["last_modified"].timestamp() * 1e6):x}"'
        if not etag.startswith('"'):
            etag = f'"{etag}"'
        store, describe = self._store, self._error

        async def read(start: int, end: int) -> AsyncIterator[bytes]:
            if start >= end:
                return
            try:
                # if-match: the bytes are those of the object `open` found, or an error.
                result = await obstore.get_async(
                    store, key, options={"range": (start, end), "if_match": meta["e_tag"]}
                )
                async for chunk in result.stream(min_chunk_size=READ_CHUNK_BYTES):
                    yield bytes(chunk)
            except (BaseError, OSError) as exc:
                raise describe(exc, "reading", key) from exc

        return StoredImage(
            key=key,
            size=meta["size"],
            content_type=content_type_for(key),
            modified_at=meta["last_modified"].timestamp(),
            etag=etag,
            _read=read,
        )

    async def delete(self, key: str) -> None:
        try:
            check_key(key)
        except ValueError:
            return
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            raise self._error(exc, "deleting", key) from exc

    async def list(self, prefix: str, *, older_than: float | None = None) -> AsyncIterator[str]:
        # obstore lists by whole path segments: list the folder, then match the prefix.
        folder = prefix.rpartition("/")[0]
        found = []
        try:
            async for batch in obstore.list(self._store, prefix=folder or None, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    if key.startswith(prefix) and (
                        older_than is None or meta["last_modified"].timestamp() <= older_than
                    ):
                        found.append(key)
        except (BaseError, OSError) as exc:
            raise self._error(exc, "listing", prefix or "/") from exc
        # A snapshot, in key order, so the caller may delete while iterating.
        for key in sorted(found):
            yield key

    def url_for(self, key: str, *, base_url: str, expires: int) -> str:
        links = self.options.links
        if links == "proxy":
            return self._signer.files_url(key, base_url=base_url, expires=expires)
        if links == "public":
            return self._public_prefix + quote(key)
        return self._presigned(key, expires)

    def _presigned(self, key: str, expires: int) -> str:
        now = self._clock()
        window = int(now // LINK_REUSE_SECONDS)
        if window != self._links_window or len(self._links) >= MAX_REUSED_LINKS:
            # Nothing kept is older than one window, and the map never outgrows its cap.
            self._links.clear()
            self._links_window = window
        reused = self._links.get(key)
        if reused is not None and expires - LINK_REUSE_SECONDS <= reused[0] <= expires:
            return reused[1]
        # The signature counts from the second the signer reads its own clock, which may
        # be the next one already: counted from the next second, the link never outlives
        # `expires`. S3 signs for at most 7 days (a link rounded up may ask one second more).
        start = math.ceil(now)
        lifetime = min(MAX_PRESIGNED_SECONDS, max(1, expires - start))
        link = obstore.sign(self._store, "GET", key, timedelta(seconds=lifetime))
        self._links[key] = (start + lifetime, link)
        return link

    async def aclose(self) -> None:
        # obstore's connections belong to its runtime; there is nothing to close per store.
        self._links.clear()

    def _error(self, exc: BaseException, doing: str, key: str) -> OSError:
        """An OSError (what the runner retries) that says what is wrong in words."""
        where = self.options.location
        text = str(exc)
        code_match = _ERROR_CODE.search(text)
        code = code_match.group(1) if code_match else None
        if NO_CREDENTIALS in text:
            # Raised by our credential provider, wrapped by obstore.
            return OSError(f"{NO_CREDENTIALS}: {NO_CREDENTIALS_HELP} ({where})")
        if code == "NoSuchBucket":
            return OSError(f"the bucket {self.options.bucket!r} does not exist ({where})")
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ):
            return OSError(
                f"S3 refused the credentials {doing} {key!r} ({code or 'permission denied'}; "
                f"{where}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the role's policy"
            )
        if "error sending request" in text or "connect" in text.lower():
            return OSError(f"the S3 endpoint is unreachable {doing} {key!r} ({where})")
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            return OSError(f"{exc} ({where})")
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return OSError(f"S3 failed {doing} {key!r}: {first_line} ({where})")
