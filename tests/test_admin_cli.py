"""`imageforge keys …` on the database and, with --url, through a server's admin API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from imageforge.testing.processes import ServerProcess, create_key, run_cli


def test_keys_commands_through_the_admin_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as server:
        created = run_cli(data, "keys", "create", "--name", "ops", "--admin", "--json")
        assert created.returncode == 0, created.stderr
        ops = json.loads(created.stdout.strip().splitlines()[-1])
        # An admin-only key cannot create tasks.
        denied = httpx.post(
            f"{server.base_url}/v1/image2/images",
            json={"model": "gpt-image-2", "prompt": "x"},
            headers={"Authorization": f"Bearer {ops['key']}"},
        )
        assert denied.status_code == 403

        # Elsewhere (another data dir: no database at hand), through the server.
        elsewhere = tmp_path / "elsewhere"
        remote = {"IMAGEFORGE_ADMIN_URL": server.base_url, "IMAGEFORGE_ADMIN_KEY": ops["key"]}
        made = run_cli(
            elsewhere, "keys", "create", "--name", "team", "--credits", "3", "--json", **remote
        )
        assert made.returncode == 0, made.stderr
        team = json.loads(made.stdout.strip().splitlines()[-1])
        headers = {"Authorization": f"Bearer {team['key']}"}
        task = httpx.post(
            f"{server.base_url}/v1/image2/images",
            json={"model": "gpt-image-2", "prompt": "x"},
            headers=headers,
        )
        assert task.status_code == 200, task.text

        listed = run_cli(elsewhere, "keys", "list", "--json", **remote)
        assert listed.returncode == 0, listed.stderr
        kinds = {entry["id"]: entry["admin"] for entry in json.loads(listed.stdout)}
        # (and the "default" key serve created on the empty database)
        assert kinds[ops["id"]] is True and kinds[team["id"]] is False and len(kinds) == 3
        table = run_cli(elsewhere, "keys", "list", **remote)
        assert "admin" in table.stdout and team["id"] in table.stdout

        credited = run_cli(elsewhere, "keys", "credit", team["id"], "--set", "10", **remote)
        assert credited.returncode == 0 and "balance 10.00" in credited.stdout, credited.stdout
        usage = run_cli(elsewhere, "keys", "usage", team["id"], "--json", **remote)
        assert json.loads(usage.stdout)["tasks"] == 1

        revoked = run_cli(elsewhere, "keys", "revoke", team["id"], **remote)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.base_url}/v1/usage", headers=headers).status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted"
            time.sleep(0.1)
        assert not (elsewhere / "imageforge.db").exists()  # it never opened a database

        # A key that is not an admin key, or none: refused, saying what to check.
        not_admin = create_key(data, "plain")
        refused = run_cli(
            elsewhere,
            "keys",
            "list",
            **{**remote, "IMAGEFORGE_ADMIN_KEY": not_admin["key"]},
        )
        assert refused.returncode == 1 and "not an admin key" in refused.stderr
        without = run_cli(elsewhere, "keys", "list", "--url", server.base_url)
        assert without.returncode == 2 and "IMAGEFORGE_ADMIN_KEY" in without.stderr

        audit = httpx.get(
            f"{server.base_url}/v1/admin/audit",
            headers={"Authorization": f"Bearer {ops['key']}"},
        ).json()["data"]
        by_actor = [(entry["actor"], entry["action"]) for entry in reversed(audit)]
        assert by_actor[:1] == [("cli", "keys.create")]  # the admin key itself, on the database
        assert (ops["id"], "keys.revoke") in by_actor and (ops["id"], "keys.create") in by_actor
