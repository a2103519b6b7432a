"""Configuration errors through the real entry point: every command, one line on stderr
(`imageforge: <setting>: <what is wrong>; <how to fix it>`), exit 78, no traceback, and
nothing announced, created or started before it.

Each test runs its commands side by side: a command's start-up is mostly imports, and the
runs are independent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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

Case = tuple[str, list[str], dict[str, str], str]
"""(name, arguments, environment, the line's expected start)"""


def _run(directory: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [IMAGEFORGE, *args],
        env=cli_env(directory / "data", **env),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _problem(result: subprocess.CompletedProcess[str], prefix: str) -> str | None:
    """What is wrong with a run that should have been one configuration error, if anything."""
    if result.returncode != EX_CONFIG:
        return f"exit {result.returncode}: {result.stderr[-1500:]}"
    if "Traceback" in result.stderr:
        return f"a traceback: {result.stderr[-1500:]}"
    lines = result.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith(prefix):
        return f"not one line starting {prefix!r}: {result.stderr!r}"
    if "; " not in lines[0].removeprefix(prefix):
        return f"no fix given: {lines[0]}"
    if "ifk_" in result.stdout or "serving" in result.stdout:
        return f"announced something first: {result.stdout!r}"
    return None


def _run_cases(
    tmp_path: Path,
    cases: list[Case],
    also: Callable[[str, Path, str], str | None] = lambda name, directory, line: None,
) -> None:
    def one(case: Case) -> str | None:
        name, args, env, prefix = case
        directory = tmp_path / name.replace(" ", "_").replace("/", "_")
        result = _run(directory, args, env)
        problem = _problem(result, prefix) or also(name, directory, result.stderr.strip())
        print(f"\n{name}: {result.stderr.strip()}")
        return None if problem is None else f"{name}: {problem}"

    with ThreadPoolExecutor(3) as pool:
        problems = [problem for problem in pool.map(one, cases) if problem]
    assert not problems, "\n".join(problems)


def test_every_command_reports_a_bad_setting_in_one_line_and_exits_78(tmp_path: Path) -> None:
    env = {"IMAGEFORGE_LEASE_SECONDS": "-1", "IMAGEFORGE_DATABASE_URL": NOWHERE}

    def names_the_default(name: str, directory: Path, line: str) -> str | None:
        return None if "default (30.0)" in line else f"no default in {line!r}"

    cases = [
        (" ".join(args), args, env, "imageforge: IMAGEFORGE_LEASE_SECONDS: ") for args in COMMANDS
    ]
    _run_cases(tmp_path, cases, names_the_default)


def test_an_engine_that_cannot_start_stops_serve_and_worker_before_anything(
    tmp_path: Path,
) -> None:
    # The first report of this issue: "ready, here is your key", then a traceback.
    env = {"IMAGEFORGE_ENGINE": "relay", "IMAGEFORGE_RELAY_API_KEY": "k"}
    commands = [["serve", "--port", "1"], ["worker"], ["worker", "--processes", "2"]]
    cases = [
        (
            " ".join(args),
            args,
            {**env, "IMAGEFORGE_DATABASE_URL": NOWHERE} if "--processes" in args else env,
            "imageforge: IMAGEFORGE_RELAY_BASE_URL: the relay engine needs",
        )
        for args in commands
    ]

    def touched_nothing(name: str, directory: Path, line: str) -> str | None:
        if (directory / "data" / "imageforge.db").exists():
            return "the database was created before the check"
        return None

    _run_cases(tmp_path, cases, touched_nothing)


def test_every_kind_of_configuration_error_reads_the_same(tmp_path: Path) -> None:
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "imageforge.toml").write_text('[models."house"]\nengnie = "relay"\n')
    cases: list[Case] = [
        ("file", ["worker"], {}, 'imageforge: models."house".engnie in imageforge.toml: '),
        ("key", ["worker"], {"IMAGEFORGE_ENGINE": "openai"}, "imageforge: OPENAI_API_KEY: "),
        (
            "plugin",
            ["worker"],
            {"IMAGEFORGE_ENGINE": "nope.module:Engine"},
            "imageforge: IMAGEFORGE_ENGINE: cannot load",
        ),
        (
            "fonts",
            ["worker"],
            {"IMAGEFORGE_OFFLINE_FONT_FILES": "/no/such.ttf"},
            "imageforge: IMAGEFORGE_OFFLINE_FONT_FILES: ",
        ),
        (
            "database",
            ["keys", "list"],
            {"IMAGEFORGE_DATABASE_URL": "mysql://x/y"},
            "imageforge: IMAGEFORGE_DATABASE_URL: ",
        ),
        (
            "allowlist",
            ["keys", "list"],
            {"IMAGEFORGE_REFERENCE_ALLOWLIST": "a/b/c"},
            "imageforge: IMAGEFORGE_REFERENCE_ALLOWLIST: ",
        ),
        (
            "config file",
            ["keys", "list"],
            {"IMAGEFORGE_CONFIG": "missing.toml"},
            "imageforge: IMAGEFORGE_CONFIG: ",
        ),
        ("--config", ["keys", "list", "--config", "nope.toml"], {}, "imageforge: --config: "),
        (
            "json",
            ["keys", "list"],
            {"IMAGEFORGE_MODELS": "{not json"},
            "imageforge: IMAGEFORGE_MODELS: ",
        ),
    ]

    def suggests(name: str, directory: Path, line: str) -> str | None:
        if name == "file" and "did you mean engine?" not in line:
            return f"no suggestion in {line!r}"
        return None

    # The "file" case runs in tmp_path / "file", where its imageforge.toml is.
    _run_cases(tmp_path, cases, suggests)


def test_an_api_node_does_not_need_the_engines_settings(tmp_path: Path) -> None:
    # `serve --no-worker` runs no engine, so an upstream's missing key is no error there.
    with ServerProcess(tmp_path / "data", "--no-worker", IMAGEFORGE_ENGINE="openai") as server:
        assert "OPENAI_API_KEY" not in server.output()
        assert server.terminate() == 0
