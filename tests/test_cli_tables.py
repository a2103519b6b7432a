"""`keys list` and `keys usage` never cut an id or a model name, whatever the terminal's
width: the id is what `credit`, `usage` and `revoke` take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageforge.testing.processes import ServerProcess, create_key, run_cli

LONG_MODEL = "gpt-image-2-house-style-preview"
MODELS = json.dumps({LONG_MODEL: {"engine": "offline"}})
TEAM = "the image team's key for the nightly catalogue renders"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two keys, one with a long name, and tasks of a model with a long name."""
    data = tmp_path_factory.mktemp("tables") / "data"
    team = create_key(data, TEAM)
    other = create_key(data, "ci")
    env = {"IMAGEFORGE_MODELS": MODELS}
    with ServerProcess(data, "--no-worker", **env) as server, server.client(team["key"]) as client:
        for model in (LONG_MODEL, "gpt-image-2"):
            created = client.post("/v1/image2/images", json={"model": model, "prompt": "x"})
            assert created.status_code == 200, created.text
        # A cancelled task, refunded, so the table has a refund to show.
        cancelled = client.post(f"/v1/result/{created.json()['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert server.terminate() == 0
    return data, [team["id"], other["id"]]


@pytest.mark.parametrize("columns", ["80", "60"])
def test_keys_list_shows_every_id_whole(data: tuple[Path, list[str]], columns: str) -> None:
    directory, ids = data
    result = run_cli(directory, "keys", "list", COLUMNS=columns, IMAGEFORGE_MODELS=MODELS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for key_id in ids:
        assert any(key_id in line for line in lines), result.stdout
    # The long name is wrapped between its words, none of them lost.
    assert all(word in result.stdout.split() for word in TEAM.split()), result.stdout
    # The layout keeps to the terminal where it can: no line longer than it but the ids'.
    assert all(len(line) <= int(columns) for line in lines if not line.startswith("key_"))
    print(f"\nCOLUMNS={columns}:\n{result.stdout}")


@pytest.mark.parametrize("columns", ["80", "60"])
def test_keys_usage_shows_ids_and_model_names_whole(
    data: tuple[Path, list[str]], columns: str
) -> None:
    directory, ids = data
    result = run_cli(directory, "keys", "usage", ids[0], COLUMNS=columns, IMAGEFORGE_MODELS=MODELS)
    assert result.returncode == 0, result.stderr
    assert ids[0] in result.stdout
    lines = result.stdout.splitlines()
    assert any(LONG_MODEL in line for line in lines), result.stdout
    assert any("gpt-image-2 " in line or line.endswith("gpt-image-2") for line in lines)
    assert "…" not in result.stdout, result.stdout
    # The refund of the cancelled gpt-image-2 task, in the currency's format like the spend
    # (the long model name makes each row a record at these widths).
    fields = [line.split() for line in lines]
    at = fields.index(["model", "gpt-image-2"])
    assert ["spend", "0.00", "USD"] in fields[at:] and fields[at + 6] == [
        "refunded",
        "0.006",
        "USD",
    ]
    print(f"\nCOLUMNS={columns}:\n{result.stdout}")
