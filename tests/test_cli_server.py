"""The `imageforge` command line and server process, exercised as a user would."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from imageforge.testing.processes import ServerProcess, create_key, run_cli, wait_terminal

KEY_PATTERN = re.compile(r"ifk_[0-9A-Za-z]{38}")
REPO_ROOT = Path(__file__).resolve().parent.parent


def assert_runnable(output: str, arguments: str, cwd: Path | None = None) -> str:
    """The command a banner prints before `arguments` can be run as printed, from the
    server's working directory: a path that exists, or a name on PATH."""
    found = re.search(rf"(\S+(?: -m imageforge)?) {re.escape(arguments)}", output)
    assert found, output
    program = found[1].split(" -m ")[0]
    where = (cwd or Path.cwd()) / program
    assert (where.is_file() and os.access(where, os.X_OK)) or (
        "/" not in program and shutil.which(program)
    ), f"{found[0]!r} cannot be run as printed"
    return found[1]


#: `serve` processes started at once on one data dir.
RACING_SERVERS = 4


def test_first_start_creates_and_prints_a_working_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as server:
        output = server.output()
        keys = KEY_PATTERN.findall(output)
        assert keys, output
        assert "curl" in output and "/v1/image2/images" in output
        with server.client(keys[0]) as client:
            response = client.post(
                "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "hello"}
            )
            assert response.status_code == 200
            result = wait_terminal(client, response.json()["id"])
            assert result["status"] == "completed"
            image = httpx.get(result["image_url"])
            assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
        assert server.terminate() == 0
    # A second start does not mint another key.
    with ServerProcess(data) as server:
        assert not KEY_PATTERN.findall(server.output())
        assert len(json.loads(run_cli(data, "keys", "list", "--json").stdout)) == 1


def test_keys_created_and_revoked_by_the_cli_take_effect_within_a_second(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as server:
        created = create_key(data, "ci")
        assert set(created) == {"id", "key", "name", "webhook_secret"}
        assert created["webhook_secret"].startswith("whsec_")
        assert created["name"] == "ci" and created["id"].startswith("key_")
        body = {"model": "gpt-image-2", "prompt": "x"}
        deadline = time.monotonic() + 1.0
        with server.client(created["key"]) as client:
            while client.post("/v1/image2/images", json=body).status_code != 200:
                assert time.monotonic() < deadline, "new key not accepted within 1 s"
                time.sleep(0.05)
            listed = json.loads(run_cli(data, "keys", "list", "--json").stdout)
            assert any(k["id"] == created["id"] and k["active"] for k in listed)
            assert all(created["key"] not in json.dumps(k) for k in listed)
            revoked = run_cli(data, "keys", "revoke", created["id"])
            assert revoked.returncode == 0, revoked.stderr
            deadline = time.monotonic() + 1.0
            while client.post("/v1/image2/images", json=body).status_code != 401:
                assert time.monotonic() < deadline, "revoked key still accepted after 1 s"
                time.sleep(0.05)
        assert run_cli(data, "keys", "revoke", created["id"]).returncode == 1


def test_sigkill_loses_no_accepted_task(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = create_key(data)["key"]
    with ServerProcess(data, "--no-worker") as server, server.client(key) as client:
        ids = [
            client.post(
                "/v1/image2/images", json={"model": "gpt-image-2", "prompt": f"p{i}"}
            ).json()["id"]
            for i in range(5)
        ]
        server.kill()
    with ServerProcess(data) as server, server.client(key) as client:
        for task_id in ids:
            assert wait_terminal(client, task_id)["status"] == "completed"
        assert server.terminate() == 0


def test_db_upgrade_and_help(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "data", "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "imageforge.db").exists()
    assert run_cli(tmp_path, "--help").returncode == 0


def test_credits_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = run_cli(data, "keys", "create", "--name", "paid", "--credits", "0.012", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout.strip().splitlines()[-1])
    listed = json.loads(run_cli(data, "keys", "list", "--json").stdout)
    assert listed[0]["balance"] == 0.012
    with ServerProcess(data, "--no-worker") as server, server.client(key["key"]) as client:
        body = {"model": "gpt-image-2", "prompt": "x"}
        assert [client.post("/v1/image2/images", json=body).status_code for _ in range(3)] == [
            200,
            200,
            402,
        ]
        added = run_cli(data, "keys", "credit", key["id"], "--add", "0.006")
        assert added.returncode == 0 and "0.006 USD" in added.stdout, added.stdout
        assert client.post("/v1/image2/images", json=body).status_code == 200
        usage = json.loads(run_cli(data, "keys", "usage", key["id"], "--json").stdout)
        assert usage["balance"] == 0 and usage["spend"] == 0.018
        assert usage["days"][0]["tasks"] == 3
    assert run_cli(data, "keys", "credit", key["id"], "--set", "5").returncode == 0
    assert json.loads(run_cli(data, "keys", "list", "--json").stdout)[0]["balance"] == 5
    assert run_cli(data, "keys", "credit", key["id"], "--unlimited").returncode == 0
    assert json.loads(run_cli(data, "keys", "list", "--json").stdout)[0]["balance"] is None
    refused = run_cli(data, "keys", "credit", key["id"], "--add", "1")
    assert refused.returncode == 1 and "unlimited" in refused.stderr
    assert run_cli(data, "keys", "create", "--name", "x", "--credits", "-1").returncode == 2
    assert run_cli(data, "keys", "credit", key["id"]).returncode == 2
    assert run_cli(data, "keys", "credit", "key_nope", "--set", "1").returncode == 1


def test_racing_first_starts_on_one_sqlite_data_dir_create_one_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ThreadPoolExecutor(RACING_SERVERS) as pool:
        servers = list(pool.map(lambda _: ServerProcess(data), range(RACING_SERVERS)))
    try:
        outputs = [server.output() for server in servers]
        printed = {key for output in outputs for key in KEY_PATTERN.findall(output)}
        listed = json.loads(run_cli(data, "keys", "list", "--json").stdout)
        assert len(printed) == 1 and len(listed) == 1, outputs
        assert sum(bool(KEY_PATTERN.search(output)) for output in outputs) == 1
        assert listed[0]["name"] == "default"
    finally:
        for server in servers:
            server.kill()


def test_serve_on_postgresql_creates_no_key_and_says_what_to_run(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    data = tmp_path / "data"
    with ServerProcess(data, "--no-worker", IMAGEFORGE_DATABASE_URL=fresh_pg_url) as server:
        output = server.output()
        assert not KEY_PATTERN.findall(output), output
        assert "distributed" in output
        assert_runnable(output, "keys create --name NAME")
        env = {"IMAGEFORGE_DATABASE_URL": fresh_pg_url}
        assert json.loads(run_cli(data, "keys", "list", "--json", **env).stdout) == []
        created = create_key(data, "ops", IMAGEFORGE_DATABASE_URL=fresh_pg_url)
        with server.client(created["key"]) as client:
            deadline = time.monotonic() + 1.0
            body = {"model": "gpt-image-2", "prompt": "x"}
            while client.post("/v1/image2/images", json=body).status_code != 200:
                assert time.monotonic() < deadline, "the operator's key not accepted within 1 s"
                time.sleep(0.05)
        assert server.terminate() == 0
    # With a key, a later start says nothing about creating one.
    with ServerProcess(data, "--no-worker", IMAGEFORGE_DATABASE_URL=fresh_pg_url) as server:
        assert "distributed" not in server.output()


def test_banners_print_commands_as_they_can_be_run(tmp_path: Path) -> None:
    """After `make serve` the program is `.venv/bin/imageforge`, not on PATH: the banner
    says so, instead of a bare `imageforge` the shell cannot find."""
    data = tmp_path / "data"
    create_key(data)
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    script = Path(sys.executable).with_name("imageforge")
    program = os.path.relpath(script, REPO_ROOT)
    with ServerProcess(data, program=[program], cwd=REPO_ROOT, PATH=path) as server:
        printed = assert_runnable(server.output(), "keys create --name NAME", cwd=REPO_ROOT)
        assert printed == program, server.output()
        assert server.terminate() == 0


def test_rotating_a_keys_webhook_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = create_key(data, "hooks")
    rotated = run_cli(data, "keys", "rotate-webhook-secret", created["id"], "--json")
    assert rotated.returncode == 0, rotated.stderr
    body = json.loads(rotated.stdout)
    assert body["id"] == created["id"]
    assert body["webhook_secret"].startswith("whsec_")
    assert body["webhook_secret"] != created["webhook_secret"]
    assert body["previous_valid_until"] > time.time() + 86_000
    unknown = run_cli(data, "keys", "rotate-webhook-secret", "key_0000000000000000")
    assert unknown.returncode == 1 and "no key" in unknown.stderr
