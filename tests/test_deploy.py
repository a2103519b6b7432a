"""The deployment files, tested without a container engine: compose.yaml parses and holds
what it promises, the environment it sets makes valid Settings, and the commands it runs
(the image's entry point with each service's command, the API's health check) work
against a real server on loopback, with PostgreSQL and an S3 bucket standing in for the
compose services."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imageforge.settings import Settings
from imageforge.testing.processes import cli_env, free_port, wait_terminal
from imageforge.testing.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from tests.cluster import WorkerProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}` / `${NAME:-default}` substitution (and `$$` for `$`)."""
    replaced = _VARIABLE.sub(
        lambda m: variables.get(m.group(1)) or (m.group(2) or ""), value.replace("$$", "\0")
    )
    return replaced.replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    variables = env_example()
    environment = compose["services"][name]["environment"]
    return {key: interpolate(str(value), variables) for key, value in environment.items()}


def test_compose_has_every_part_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "bucket",
        "api-1",
        "api-2",
        "worker-1",
        "worker-2",
        "lb",
    }
    for name in ("postgres", "minio", "api-1", "api-2", "lb"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    # One port reaches the cluster: the load balancer's.
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"lb": ["8080:8080"]}
    for name in ("api-1", "api-2", "worker-1", "worker-2"):
        assert services[name]["image"] == "imageforge:latest"
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        # No shared disk: the imageforge services mount nothing.
        assert "volumes" not in services[name]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server api-1:8000" in nginx and "server api-2:8000" in nginx
    assert "X-Forwarded-Proto $scheme" in nginx
    assert (ROOT / "Dockerfile").read_text().count("USER imageforge") == 1


@pytest.mark.parametrize("service", ["api-1", "worker-2"])
def test_the_environment_compose_sets_is_valid_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("IMAGEFORGE_"):
            monkeypatch.delenv(name)
    env = service_env(compose, service)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    variables = env_example()
    assert settings.storage == "s3" and settings.s3_bucket == variables["S3_BUCKET"]
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.s3_links == "proxy"
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://imageforge:")
    assert settings.url_signing_secret is not None
    assert settings.trusted_proxies == ["172.30.0.0/24"]
    assert settings.image_retention_seconds == int(variables["IMAGE_RETENTION_SECONDS"])
    # An operator who empties a retention keeps everything.
    monkeypatch.setenv("IMAGEFORGE_TASK_RETENTION_SECONDS", "")
    assert Settings.load().task_retention_seconds is None


def _entry_point(compose: dict[str, Any], service: str) -> list[str]:
    """What the container runs: the image's ENTRYPOINT, then the service's command."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', dockerfile, re.M)
    assert entry is not None and entry.group(1) == "imageforge"
    command: list[str] = compose["services"][service]["command"]
    return [sys.executable, "-m", "imageforge", *command]


def _local_env(
    compose: dict[str, Any], service: str, pg_url: str, moto: MotoServer, bucket: str
) -> dict[str, str]:
    """The service's environment, its hosts replaced by what stands in for them here."""
    env = service_env(compose, service)
    env.update(
        IMAGEFORGE_DATABASE_URL=pg_url,
        IMAGEFORGE_S3_ENDPOINT_URL=moto.endpoint_url,
        IMAGEFORGE_S3_BUCKET=bucket,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        IMAGEFORGE_TRUSTED_PROXIES="127.0.0.1",
    )
    return env


def test_the_services_commands_and_the_health_check_work(
    compose: dict[str, Any], tmp_path: Path, fresh_pg_url: str, moto_s3: MotoServer
) -> None:
    bucket = moto_s3.create_bucket()
    port = free_port()
    api_env = _local_env(compose, "api-1", fresh_pg_url, moto_s3, bucket)
    api_env["IMAGEFORGE_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    command = [
        "127.0.0.1" if arg == "0.0.0.0" else str(port) if arg == "8000" else arg
        for arg in _entry_point(compose, "api-1")
    ]
    health = compose["services"]["api-1"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "imageforge-healthcheck"]
    check = [sys.executable, str(DEPLOY / "healthcheck.py"), health[2].replace("8000", str(port))]

    def healthy() -> bool:
        return subprocess.run(check, capture_output=True, timeout=10).returncode == 0

    assert not healthy()  # nothing listens yet
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen(
        command, env=cli_env(tmp_path / "api", **api_env), stdout=log, stderr=subprocess.STDOUT
    )
    worker_command = _entry_point(compose, "worker-1")[3:]
    worker_env = _local_env(compose, "worker-1", fresh_pg_url, moto_s3, bucket)
    worker = WorkerProcess(tmp_path / "worker" / "data", worker_env, args=worker_command[1:])
    try:
        wait_until(healthy, 60, "the API's health check to pass")
        worker.wait_started()
        created = subprocess.run(
            [*_entry_point(compose, "api-1")[:3], "keys", "create", "--name", "ops", "--json"],
            env=cli_env(tmp_path / "cli", **api_env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        secret = json.loads(created.stdout.strip().splitlines()[-1])["key"]
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {secret}"}
        ) as client:
            task = client.post("/v1/image2/images", json={"model": "gpt-image-2", "prompt": "x"})
            body = wait_terminal(client, task.json()["id"])
            assert body["status"] == "completed", body
            # Proxy links, under the public base URL, streamed from the bucket.
            assert body["image_url"].startswith(f"http://127.0.0.1:{port}/files/")
            image = httpx.get(body["image_url"])
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert worker.terminate() == 0
    finally:
        worker.close()
        api.terminate()
        api.wait(timeout=30)
        log.close()
    assert not healthy()


def test_the_readmes_complete_configuration_file_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A complete configuration file", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "imageforge.toml"
    path.write_text(example)
    for name in list(os.environ):
        if name.startswith("IMAGEFORGE_"):
            monkeypatch.delenv(name)
    settings = Settings.load(path)
    assert settings.storage == "s3" and settings.s3_prefix == "imageforge"
    assert settings.image_retention_seconds == 604_800
    assert settings.task_retention_seconds == 2_592_000
    assert settings.price_book().currency == "USD"
