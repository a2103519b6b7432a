"""Configuration errors through the real entry point: every command, one line on stderr
(`imageforge: <setting>: <what is wrong>; <how to fix it>`), exit 78, no traceback, and
nothing announced, created or started before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imageforge.testing.processes import ServerProcess, cli_env

#: The console script `pip install` made, as a user runs it.
IMAGEFORGE = str(Path(sys.executable).with_name("imageforge"))
EX_CONFIG = 78
#: A PostgreSQL URL nothing listens on: the check must fail before any connection.
NOWHERE = "postgresql://imageforge@127.0.0.1:1/imageforge"

COMMANDS = [
    ["serve", "--port", "1"],
    ["serve", "--no-worker", "--port", "1"],
    ["worker"],
    ["worker", "--processes", "2"],
    ["keys", "create", "--name", "x"],
    ["keys", "list"],
    ["keys", "credit", "key_0000000000000000", "--add", "1"],
    ["keys", "usage", "key_0000000000000000"],
    ["keys", "revoke", "key_0000000000000000"],
    ["db", "upgrade"],
]


def _run(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMAGEFORGE, *args],
        env=cli_env(tmp_path / "data", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert result.returncode == EX_CONFIG, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(prefix), line
    assert "; " in line.removeprefix(prefix), f"no fix given: {line}"
    # Nothing was announced: no key, no "ready", no "serving on".
    assert "ifk_" not in result.stdout and "serving" not in result.stdout, result.stdout
    return line


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_bad_setting_is_one_line_and_exit_78(tmp_path: Path, args: list[str]) -> None:
    result = _run(tmp_path, args, IMAGEFORGE_LEASE_SECONDS="-1", IMAGEFORGE_DATABASE_URL=NOWHERE)
    line = _assert_one_line(result, "imageforge: IMAGEFORGE_LEASE_SECONDS: ")
    assert "greater than 0" in line and "default (30.0)" in line


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] in ("serve", "worker")], ids=" ".join)
def test_a_bad_key_in_the_file_is_named_with_the_file(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "imageforge.toml").write_text('[models."house"]\nengnie = "relay"\n')
    result = _run(tmp_path, args, IMAGEFORGE_DATABASE_URL=NOWHERE)
    line = _assert_one_line(result, 'imageforge: models."house".engnie in imageforge.toml: ')
    assert "did you mean engine?" in line


@pytest.mark.parametrize(
    "args",
    [["serve", "--port", "1"], ["worker"], ["worker", "--processes", "2"]],
    ids=" ".join,
)
def test_an_engine_that_cannot_start_stops_the_worker_before_anything(
    tmp_path: Path, args: list[str]
) -> None:
    # The first report of this issue: "ready, here is your key", then a traceback.
    env = {"IMAGEFORGE_ENGINE": "relay", "IMAGEFORGE_RELAY_API_KEY": "k"}
    if "--processes" in args:
        env["IMAGEFORGE_DATABASE_URL"] = NOWHERE
    result = _run(tmp_path, args, **env)
    line = _assert_one_line(result, "imageforge: IMAGEFORGE_RELAY_BASE_URL: ")
    assert "relay" in line and "https://" in line
    assert not (tmp_path / "data" / "imageforge.db").exists(), "the check must come first"


def test_an_api_node_does_not_need_the_engines_settings(tmp_path: Path) -> None:
    # `serve --no-worker` runs no engine, so an upstream's missing key is no error there.
    with ServerProcess(tmp_path / "data", "--no-worker", IMAGEFORGE_ENGINE="openai") as server:
        assert "OPENAI_API_KEY" not in server.output()
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("env", "prefix"),
    [
        ({"IMAGEFORGE_ENGINE": "openai"}, "imageforge: OPENAI_API_KEY: "),
        ({"IMAGEFORGE_ENGINE": "nope.module:Engine"}, "imageforge: IMAGEFORGE_ENGINE: "),
        ({"IMAGEFORGE_OFFLINE_FONT_FILES": "/no/such.ttf"}, "imageforge: IMAGEFORGE_OFFLINE_FONT"),
        ({"IMAGEFORGE_DATABASE_URL": "mysql://x/y"}, "imageforge: IMAGEFORGE_DATABASE_URL: "),
        ({"IMAGEFORGE_REFERENCE_ALLOWLIST": "a/b/c"}, "imageforge: IMAGEFORGE_REFERENCE_ALLOWLIST"),
        ({"IMAGEFORGE_CONFIG": "missing.toml"}, "imageforge: IMAGEFORGE_CONFIG: "),
        ({"IMAGEFORGE_MODELS": "{not json"}, "imageforge: IMAGEFORGE_MODELS: "),
    ],
)
def test_every_kind_of_configuration_error_reads_the_same(
    tmp_path: Path, env: dict[str, str], prefix: str
) -> None:
    _assert_one_line(_run(tmp_path, ["worker"], **env), prefix)


def test_a_missing_config_file_named_on_the_command_line(tmp_path: Path) -> None:
    result = _run(tmp_path, ["keys", "list", "--config", "nope.toml"])
    _assert_one_line(result, "imageforge: --config: ")
