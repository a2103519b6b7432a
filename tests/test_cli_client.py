"""`imageforge generate`, `result` and `tasks` through the entry point, against real servers:
imageforge itself (no lifecycle extensions: the commands poll), and the stand-in task API
that serves events and the listing (`tests/sdk_task_api.py`)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageforge.testing.processes import ServerProcess, cli_env, create_key, free_port, run_cli
from tests.sdk_servers import serve_imageforge
from tests.sdk_task_api import StandInTaskAPI, Switches, serve_task_api
from tests.test_sdk import png_size


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "cli-client")


@pytest.fixture(scope="module")
def env(server: ServerProcess) -> dict[str, str]:
    key = create_key(server.data_dir, "cli")["key"]
    return {"IMAGEFORGE_BASE_URL": server.base_url, "IMAGEFORGE_API_KEY": key}


def imageforge(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """The command as a user runs it, from `tmp_path` (its own data dir is never used)."""
    result = run_cli(tmp_path / "unused-data", *args, **env)
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """One line `imageforge: …` on stderr (after the live display, if any), no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("imageforge: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert stderr.endswith(errors[0] + "\n"), stderr
    for fragment in fragments:
        assert fragment in errors[0], stderr


def test_generate_saves_a_file_of_the_asked_ratio(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "out" / "lake.png"
    code, out, err = imageforge(
        tmp_path, "generate", "a lake", "--ratio", "16:9", "--quality", "medium", "-o",
        str(target), **env,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == str(target)
    assert png_size(target.read_bytes()) == (1536, 864)
    assert "completed" in err, "the display ends on the task's status"


def test_generate_n_writes_one_file_per_task_into_a_directory(
    tmp_path: Path, env: dict[str, str]
) -> None:
    out_dir = tmp_path / "shots"
    code, out, err = imageforge(
        tmp_path, "generate", "a lighthouse", "--size", "1280x1024", "-n", "2", "-o",
        str(out_dir), "--json", **env,
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and len({line["id"] for line in lines}) == 2, "two tasks"
    for line in lines:
        assert line["status"] == "completed" and line["model"] == "gpt-image-2"
        assert line["file"] == str(out_dir / f"{line['id']}.png")
        assert png_size(Path(line["file"]).read_bytes()) == (1280, 1024)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{x['id']}.png" for x in lines)


def test_generate_without_output_saves_in_the_current_directory(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = imageforge(tmp_path, "generate", "a fox", "--model", "gpt-image-2-r", **env)
    assert code == 0, err
    saved = Path(out.strip())
    assert saved.parent == tmp_path and re.fullmatch(r"image_[0-9a-f-]{36}\.png", saved.name)
    assert png_size(saved.read_bytes()) == (1024, 1024)

    code, out, err = imageforge(tmp_path, "generate", "a fox", "-o", "new/", **env)
    assert code == 0, err
    saved = Path(out.strip())
    assert saved.parent == Path("new") and saved.suffix == ".png" and saved.is_file()


def test_a_refused_request_is_one_line_naming_the_field(
    tmp_path: Path, env: dict[str, str]
) -> None:
    code, out, err = imageforge(tmp_path, "generate", "x", "--size", "1000x1000", **env)
    assert code == 1 and out == ""
    assert_one_line_error(err, "size: both edges must be multiples of 16", "HTTP 400")

    code, _, err = imageforge(tmp_path, "generate", "x", "--ratio", "4:3", "--resolution", "4k",
                              **env)  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "resolution", "HTTP 400")


def test_a_file_name_for_several_images_is_refused_before_anything_is_charged(
    tmp_path: Path, env: dict[str, str], server: ServerProcess
) -> None:
    code, _, err = imageforge(tmp_path, "generate", "x", "-n", "3", "-o", "x.png", **env)
    assert code == 1
    assert_one_line_error(err, "-o", "give a directory")


def test_key_and_server_errors(tmp_path: Path, env: dict[str, str]) -> None:
    wrong_key = {**env, "IMAGEFORGE_API_KEY": "ifk_" + "x" * 38}
    code, _, err = imageforge(tmp_path, "generate", "x", **wrong_key)
    assert code == 1
    assert_one_line_error(err, "HTTP 401")

    code, _, err = imageforge(
        tmp_path, "generate", "x", IMAGEFORGE_BASE_URL=env["IMAGEFORGE_BASE_URL"]
    )
    assert code == 78
    assert_one_line_error(err, "no API key", "IMAGEFORGE_API_KEY", "keys create")

    nobody = {**env, "IMAGEFORGE_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    code, _, err = imageforge(tmp_path, "tasks", **nobody)
    assert code == 1
    assert_one_line_error(err)

    code, _, err = imageforge(tmp_path, "result", "x", **{**env, "IMAGEFORGE_BASE_URL": "ftp://x"})
    assert code == 78
    assert_one_line_error(err, "IMAGEFORGE_BASE_URL")


def test_result_shows_a_task_and_saves_its_image(tmp_path: Path, env: dict[str, str]) -> None:
    code, out, err = imageforge(tmp_path, "generate", "a boat", "--ratio", "3:4", "--json", "-o",
                                str(tmp_path), **env)  # fmt: skip
    assert code == 0, err
    task_id = json.loads(out)["id"]

    code, out, err = imageforge(tmp_path, "result", task_id, **env)
    assert code == 0, err
    assert out.startswith(f"{task_id}  completed\n") and "image: http" in out

    target = tmp_path / "again.png"
    code, out, err = imageforge(tmp_path, "result", task_id, "-o", str(target), **env)
    assert code == 0, err
    assert png_size(target.read_bytes()) == (768, 1024)

    code, _, err = imageforge(tmp_path, "result", "image_00000000-0000-4000-8000-000000000000",
                              **env)  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "No task found", "HTTP 404")


def test_tasks_lists_this_keys_tasks_newest_first(tmp_path: Path, env: dict[str, str]) -> None:
    ids = []
    for prompt in ("a hill", "a cloud"):
        code, out, err = imageforge(tmp_path, "generate", prompt, "--json", "-o", str(tmp_path),
                                    **env)  # fmt: skip
        assert code == 0, err
        ids.append(json.loads(out)["id"])
    code, out, err = imageforge(tmp_path, "tasks", "--json", **env)
    assert code == 0, err
    listed = [json.loads(line)["id"] for line in out.splitlines()]
    assert listed[:2] == ids[::-1]


def test_tasks_says_when_the_server_cannot_list(tmp_path: Path) -> None:
    with serve_task_api(Switches(listing=False), step_seconds=0.05) as api:
        env = {"IMAGEFORGE_BASE_URL": api.base_url, "IMAGEFORGE_API_KEY": "sk-stand-in"}
        code, out, err = imageforge(tmp_path, "tasks", **env)
    assert code == 1 and out == ""
    assert_one_line_error(err, "does not list tasks", "result ID")


@pytest.fixture
def task_api() -> Iterator[StandInTaskAPI]:
    with serve_task_api(Switches(), step_seconds=0.05) as api:
        yield api


def test_against_a_server_with_events_and_listing(tmp_path: Path, task_api: StandInTaskAPI) -> None:
    env = {"IMAGEFORGE_BASE_URL": task_api.base_url, "IMAGEFORGE_API_KEY": "sk-stand-in"}
    code, out, err = imageforge(tmp_path, "generate", "a fox", "-o", str(tmp_path), **env)
    assert code == 0, err
    assert png_size(Path(out.strip()).read_bytes()) == (1024, 1024)
    assert task_api.counts["events"] == 1 and task_api.counts["poll"] == 0, "events, not polls"
    assert "100%" in err, err

    code, out, err = imageforge(tmp_path, "generate", "please fail", **env)
    assert code == 1 and out == ""
    assert_one_line_error(err, "failed: the engine refused this prompt")

    code, out, err = imageforge(tmp_path, "tasks", "--limit", "5", **env)
    assert code == 0, err
    for task_id in task_api.order:
        assert task_id in out
    assert "completed" in out and "failed" in out

    code, out, _ = imageforge(tmp_path, "tasks", "--status", "failed", "--json", **env)
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["failed"]


def test_the_banners_generate_command_works_as_printed(
    tmp_path: Path, server: ServerProcess
) -> None:
    """A new user pastes the line `make serve` printed into a second shell."""
    line = next((line for line in server.output().splitlines() if " generate " in line), None)
    assert line is not None, server.output()
    words = shlex.split(line)
    variables = dict(word.split("=", 1) for word in words if word.startswith("IMAGEFORGE_"))
    command = [word for word in words if not word.startswith("IMAGEFORGE_")]
    assert variables["IMAGEFORGE_BASE_URL"] == server.base_url
    assert command[-4:] == ["generate", "a lake", "-o", "lake.png"]
    # Printed relative to the server's working directory (`.venv/bin/…` after `make serve`);
    # run from another one here, so the picture lands in this test's own directory.
    command[0] = str(Path.cwd() / command[0])
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=cli_env(tmp_path / "unused-data", **variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert png_size((tmp_path / "lake.png").read_bytes()) == (1024, 1024)


def test_a_timeout_or_ctrl_c_leaves_the_task_running(
    tmp_path: Path, task_api: StandInTaskAPI
) -> None:
    env = {"IMAGEFORGE_BASE_URL": task_api.base_url, "IMAGEFORGE_API_KEY": "sk-stand-in"}
    code, out, err = imageforge(tmp_path, "generate", "hold on", "--timeout", "1", **env)
    assert code == 1 and out == ""
    assert_one_line_error(err, "did not finish within 1 s", "result image_", "-o FILE")

    waiting = subprocess.Popen(
        [sys.executable, "-m", "imageforge", "generate", "hold still"],
        env=cli_env(tmp_path / "unused-data", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(task_api.order) < 2:
            assert time.monotonic() < deadline, "the second task was never created"
            time.sleep(0.05)
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 130 and out == ""
    assert_one_line_error(err, "stopped; the tasks go on", "result ID -o FILE")
    assert all(task.status == "processing" for task in task_api.tasks.values()), "not cancelled"
