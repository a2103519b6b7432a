"""The s3 backend beyond the contract: multipart, link modes and reuse, credentials from
the AWS chain, and a start-up check that says what is wrong. All against moto's server
on 127.0.0.1; every presigned link is downloaded over HTTP."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest

from imageforge.errors import ConfigurationError
from imageforge.runtime import configured_storage
from imageforge.settings import Settings
from imageforge.storage.base import LINK_REUSE_SECONDS
from imageforge.storage.probe import check_storage
from imageforge.storage.s3 import MAX_REUSED_LINKS, S3Options, S3Storage
from imageforge.testing.processes import free_port
from imageforge.testing.s3 import MotoServer, static_credentials
from tests.storages import SIGNER, download, link_expiry, read_all, s3_storage

KEY = "2026/11/25/image_00000000-0000-4000-8000-000000000001-1.png"


async def test_large_images_go_up_in_parts_and_come_back_whole(moto_s3: MotoServer) -> None:
    storage = s3_storage(moto_s3, multipart_threshold_bytes=5 * 1024 * 1024)
    data = os.urandom(12 * 1024 * 1024 + 17)
    await storage.put(KEY, data, "image/png")
    image = await storage.open(KEY)
    assert image is not None and image.size == len(data)
    # S3 tags a multipart object's etag with its number of parts.
    assert image.etag.endswith('-3"'), image.etag
    assert await read_all(storage, KEY) == data
    response = await download(storage.url_for(KEY, base_url="", expires=int(time.time()) + 60))
    assert response.status_code == 200
    assert response.content == data and response.headers["content-type"] == "image/png"


async def test_small_images_go_up_in_one_request(moto_s3: MotoServer) -> None:
    storage = s3_storage(moto_s3)
    await storage.put(KEY, b"small", "image/webp")
    image = await storage.open(KEY)
    assert image is not None and "-" not in image.etag
    response = await download(storage.url_for(KEY, base_url="", expires=int(time.time()) + 60))
    assert (response.content, response.headers["content-type"]) == (b"small", "image/webp")


async def test_presigned_links_are_reused_for_a_minute_at_most(moto_s3: MotoServer) -> None:
    # The reuse window follows the storage's clock (here at a window's start); the
    # signature follows the real one.
    now = [time.time() // LINK_REUSE_SECONDS * LINK_REUSE_SECONDS + 0.5]
    storage = S3Storage(
        S3Options(bucket=moto_s3.create_bucket(), endpoint_url=moto_s3.endpoint_url),
        SIGNER,
        credentials=static_credentials,  # type: ignore[arg-type]
        clock=lambda: now[0],
    )
    await storage.put(KEY, b"x", "image/png")
    ttl = 86_400
    first = storage.url_for(KEY, base_url="", expires=int(now[0]) + ttl)
    now[0] += LINK_REUSE_SECONDS - 2
    assert storage.url_for(KEY, base_url="", expires=int(now[0]) + ttl) == first
    now[0] += 2
    second = storage.url_for(KEY, base_url="", expires=int(now[0]) + ttl)
    # Signed anew (the text may match: the real clock hardly moved).
    assert storage._links[KEY][0] == int(now[0]) + ttl
    # A shorter lifetime than the reused link's is never answered with it.
    short = storage.url_for(KEY, base_url="", expires=int(now[0]) + 5)
    assert abs(link_expiry(httpx.URL(short)) - (int(time.time()) + 5)) <= 1
    for link in (first, second, short):
        assert (await download(link)).content == b"x"
    for n in range(MAX_REUSED_LINKS + 10):
        storage.url_for(f"k/{n}.png", base_url="", expires=int(now[0]) + ttl)
    assert len(storage._links) <= MAX_REUSED_LINKS


async def test_proxy_and_public_links(moto_s3: MotoServer) -> None:
    proxy = s3_storage(moto_s3, links="proxy", prefix="p")
    url = httpx.URL(proxy.url_for(KEY, base_url="https://api.example.com", expires=1_900_000_000))
    assert (url.host, url.path) == ("api.example.com", f"/files/{KEY}")
    assert SIGNER.is_valid(KEY, 1_900_000_000, url.params["signature"])

    bucket = moto_s3.create_bucket()
    moto_s3.make_public(bucket)
    public = S3Storage(
        S3Options(
            bucket=bucket,
            prefix="cdn/images",
            endpoint_url=moto_s3.endpoint_url,
            links="public",
            # moto answers unsigned GETs, as a public bucket (or a CDN in front) does.
            public_base_url=f"{moto_s3.endpoint_url}/{bucket}",
        ),
        SIGNER,
        credentials=static_credentials,  # type: ignore[arg-type]
    )
    await public.put(KEY, b"public bytes", "image/png")
    link = public.url_for(KEY, base_url="ignored", expires=1)
    assert link == f"{moto_s3.endpoint_url}/{bucket}/cdn/images/{KEY}"
    assert (await download(link)).content == b"public bytes"


def test_addressing_styles() -> None:
    def link(**options: Any) -> httpx.URL:
        storage = S3Storage(
            S3Options(bucket="images", region="eu-west-1", **options),
            SIGNER,
            credentials=static_credentials,  # type: ignore[arg-type]
        )
        return httpx.URL(storage.url_for("a/b.png", base_url="", expires=int(time.time()) + 60))

    aws = link()
    assert (aws.host, aws.path) == ("images.s3.eu-west-1.amazonaws.com", "/a/b.png")
    minio = link(endpoint_url="http://minio.internal:9000")
    assert (minio.host, minio.port, minio.path) == ("minio.internal", 9000, "/images/a/b.png")
    hosted = link(endpoint_url="https://s3.example.com", path_style=False)
    assert (hosted.host, hosted.path) == ("images.s3.example.com", "/a/b.png")


@pytest.mark.parametrize("prefix", ["a//b", "../x", "a/./b"])
def test_a_prefix_that_escapes_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="s3_prefix"):
        S3Storage(S3Options(bucket="images", prefix=prefix), SIGNER)


# The start-up check -----------------------------------------------------------------


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, storage="s3", s3_region="us-east-1", **values)


async def _start_up_check(settings: Settings) -> None:
    factory, location = configured_storage(settings)
    storage = factory(SIGNER)
    try:
        await check_storage(storage, location=location)
    finally:
        await storage.aclose()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS configuration from the machine: only what each test sets."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    # Instance metadata would be asked last: point it at a closed port of loopback.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "imageforge-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "imageforge-test-secret")
    return monkeypatch


async def test_start_up_check_passes_and_leaves_nothing(
    tmp_path: Path, moto_s3: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    bucket = moto_s3.create_bucket()
    settings = _settings(
        tmp_path, s3_bucket=bucket, s3_endpoint_url=moto_s3.endpoint_url, s3_prefix="x/"
    )
    await _start_up_check(settings)
    assert moto_s3.object_keys(bucket) == []


async def test_start_up_check_names_a_missing_bucket(
    tmp_path: Path, moto_s3: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, s3_bucket="no-such-bucket", s3_endpoint_url=moto_s3.endpoint_url)
    with pytest.raises(ConfigurationError) as refused:
        await _start_up_check(settings)
    message = str(refused.value)
    assert "s3://no-such-bucket/" in message and moto_s3.endpoint_url in message
    assert "while writing a probe object" in message
    assert "the bucket 'no-such-bucket' does not exist" in message


async def test_start_up_check_names_an_unreachable_endpoint(
    tmp_path: Path, aws_env: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match="endpoint is unreachable") as refused:
        await _start_up_check(_settings(tmp_path, s3_bucket="images", s3_endpoint_url=endpoint))
    print(f"\nunreachable endpoint reported after {time.monotonic() - started:.1f}s")
    assert endpoint in str(refused.value)


async def test_start_up_check_says_when_there_are_no_credentials(
    tmp_path: Path, moto_s3: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    settings = _settings(
        tmp_path, s3_bucket=moto_s3.create_bucket(), s3_endpoint_url=moto_s3.endpoint_url
    )
    with pytest.raises(ConfigurationError, match="no AWS credentials found"):
        await _start_up_check(settings)


# Credentials checked by the server: a moto of its own, with IAM enforced ---------------


@pytest.fixture
def strict_moto() -> Any:
    with MotoServer() as server:
        yield server


def _iam_user(moto: MotoServer) -> tuple[str, str]:
    """A user moto's IAM knows, allowed everything on S3; → (access key id, secret)."""
    iam = botocore.session.get_session().create_client(
        "iam",
        endpoint_url=moto.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    name = f"imageforge-{secrets.token_hex(3)}"
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="images",
        PolicyDocument='{"Version": "2012-10-17", "Statement": '
        '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


async def test_credentials_from_a_profile_in_the_config_files_are_used_and_checked(
    tmp_path: Path, strict_moto: MotoServer, aws_env: pytest.MonkeyPatch
) -> None:
    bucket = strict_moto.create_bucket()
    access_key, secret = _iam_user(strict_moto)
    strict_moto.require_credentials()
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[images]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret}\n"
        "[stale]\naws_access_key_id = AKIAUNKNOWN\naws_secret_access_key = nope\n"
    )
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    settings = _settings(tmp_path, s3_bucket=bucket, s3_endpoint_url=strict_moto.endpoint_url)

    aws_env.setenv("AWS_PROFILE", "images")
    await _start_up_check(settings)

    aws_env.setenv("AWS_PROFILE", "stale")
    with pytest.raises(ConfigurationError, match="S3 refused the credentials") as refused:
        await _start_up_check(settings)
    assert "InvalidAccessKeyId" in str(refused.value)
