"""`imageforge generate`, `result` and `tasks`: the API's client side, on the SDK.

They talk to a server by URL and key, the SDK's `IMAGEFORGE_BASE_URL` and `IMAGEFORGE_API_KEY`
(or `--base-url` / `--api-key`), so they work against a remote imageforge or any GPT Image 2
task API; they use imageforge's extensions (events, long-poll, listing) where the server's
`/openapi.json` lists them, and poll otherwise.

What a script reads goes to stdout (the saved files' paths, or JSON lines with `--json`); the
live display and errors go to stderr. A failure is one line, `imageforge: <what went wrong>`,
and a non-zero exit: 1 when the server refused or a task failed, 78 (EX_CONFIG) for a missing
key or a bad URL, 130 when stopped with Ctrl-C (the tasks go on on the server).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from imageforge.cli.output import EX_CONFIG, command_name, console, err_console
from imageforge.cli.stopping import run_unless_stopped
from imageforge.cli.tables import print_rows
from imageforge.cli.task_display import TaskDisplay
from imageforge_client import (
    APIStatusError,
    AsyncClient,
    AsyncImageResult,
    ClientConfigurationError,
    ImageforgeClientError,
    TaskFailedError,
    TaskResult,
    TaskTimeoutError,
    UnsupportedFeatureError,
)

T = TypeVar("T")
#: sysexits.h would say 130 is "terminated by Ctrl-C" (128 + SIGINT), as shells report it.
EXIT_STOPPED = 130
#: The most tasks one `generate` creates: each is charged, so a typo must not cost a fortune.
MAX_TASKS = 16

BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="IMAGEFORGE_BASE_URL",
        show_envvar=True,
        help="The server (default http://127.0.0.1:8000).",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="IMAGEFORGE_API_KEY",
        show_envvar=True,
        show_default=False,
        help="The API key (better from the environment: arguments show in `ps`).",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per task on stdout.")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=1, help="Seconds to wait for the tasks; they go on after."),
]


@dataclass(frozen=True)
class Connection:
    base_url: str | None
    api_key: str | None

    def client(self) -> AsyncClient:
        return AsyncClient(self.api_key, base_url=self.base_url)


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.", show_default=False)],
    model: Annotated[
        str | None, typer.Option(help="Model (the server's default: gpt-image-2).")
    ] = None,
    ratio: Annotated[str | None, typer.Option(help="Aspect ratio, e.g. 16:9.")] = None,
    resolution: Annotated[str | None, typer.Option(help="1k, 2k or 4k (needs --ratio).")] = None,
    quality: Annotated[str | None, typer.Option(help="low, medium or high.")] = None,
    size: Annotated[
        str | None, typer.Option(help="WxH, e.g. 1536x1024 (overrides ratio and resolution).")
    ] = None,
    ref: Annotated[
        list[str] | None,
        typer.Option("--ref", help="A reference image URL; repeat for several."),
    ] = None,
    count: Annotated[
        int,
        typer.Option("-n", "--count", min=1, max=MAX_TASKS, help="Images to make (one task each)."),
    ] = 1,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="File to write, or a directory for <id>.png per image (default: the "
            "current directory).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create image tasks, show their progress live, and save each image when it is done."""
    connection = _connection(base_url, api_key)
    target, directory = _output(output, count)
    options: dict[str, Any] = {
        "model": model,
        "ratio": ratio,
        "resolution": resolution,
        "quality": quality,
        "size": size,
        "image_urls": list(ref) if ref else None,
    }

    async def work(client: AsyncClient) -> list[_Outcome]:
        created: list[str] = []
        failure: ImageforgeClientError | None = None
        # One task per image: the contract has no `n`. Created one after another, so a
        # refusal (bad input, no credit) stops before the next charge.
        for _ in range(count):
            try:
                task = await client.images.create(prompt, **options)
            except ImageforgeClientError as error:
                failure = error
                break
            created.append(task.id)
        if not created and failure is not None:
            raise failure
        outcomes = await _wait_and_save(client, created, target, directory, timeout)
        if failure is not None:
            outcomes.append(_Outcome(None, None, _message(failure)))
        return outcomes

    outcomes = _run(connection, work)
    _report(outcomes, as_json)


def result(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id (image_…).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Save the image here (a directory gets <id>.png), waiting for the task if it "
            "is not done yet.",
        ),
    ] = None,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 600.0,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a task's state; with -o, wait for it and save its image."""
    connection = _connection(base_url, api_key)

    async def work(client: AsyncClient) -> list[_Outcome]:
        if output is None:
            return [_Outcome(await client.results.get(task_id), None, None)]
        return await _wait_and_save(client, [task_id], output, None, timeout)

    outcomes = _run(connection, work)
    if output is not None:
        _report(outcomes, as_json)
        return
    task = outcomes[0].task
    assert task is not None
    if as_json:
        print(_json_line(task, None), flush=True)
        return
    _describe(task)


def tasks(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    status: Annotated[
        str | None, typer.Option(help="Only queued, processing, completed or failed ones.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's.")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A table of the key's recent tasks (on servers that list them: GET /v1/tasks)."""
    connection = _connection(base_url, api_key)

    async def work(client: AsyncClient) -> list[TaskResult]:
        if not (await client.capabilities()).listing:
            raise UnsupportedFeatureError(
                "listing",
                "this server does not list tasks (its /openapi.json has no GET /v1/tasks); "
                f"show one with `{command_name()} result ID`",
            )
        found: list[TaskResult] = []
        async for task in client.tasks.list(status=status, model=model, limit=limit):
            found.append(task)
            if len(found) == limit:
                break
        return found

    listed = _run(connection, work)
    if as_json:
        for task in listed:
            print(_json_line(task, None))
        return
    if not listed:
        console.print("No tasks.")
        return
    print_rows(
        ("id", "created", "model", "status", "amount", "image / error"),
        [
            (
                task.id,
                _local_time(task.created),
                task.model,
                task.status,
                "" if task.amount is None else str(task.amount),
                (task.image_url if task.status == "completed" else task.error) or "",
            )
            for task in listed
        ],
        whole=("id", "model", "status"),
    )


@dataclass(frozen=True)
class _Outcome:
    task: TaskResult | None
    file: Path | None
    error: str | None


async def _wait_and_save(
    client: AsyncClient,
    task_ids: list[str],
    output: Path | None,
    directory: Path | None,
    wait_seconds: float,
) -> list[_Outcome]:
    """Wait for every task at once, each saved as soon as it completes."""
    with TaskDisplay(err_console) as display:
        for task_id in task_ids:
            display.add(task_id, "waiting")

        async def one(task_id: str) -> _Outcome:
            try:
                image: AsyncImageResult = await client.results.wait(
                    task_id, timeout=wait_seconds, on_progress=display.update
                )
                display.update(image.task)
                saved = await image.save(directory or output or Path.cwd())
            except TaskFailedError as error:
                display.update(error.task)
                return _Outcome(error.task, None, _message(error))
            except ImageforgeClientError as error:
                return _Outcome(None, None, _message(error))
            return _Outcome(image.task, saved, None)

        return list(await asyncio.gather(*(one(task_id) for task_id in task_ids)))


def _output(output: str | None, count: int) -> tuple[Path | None, Path | None]:
    """(file, directory) from -o. A directory is an existing one, a path ending in `/`, or,
    with -n > 1, a path without a suffix (created); a file name with -n > 1 is refused, since
    each image would overwrite the last."""
    if output is None:
        return None, None
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
        return None, path
    if count > 1:
        if path.suffix:
            _fail(f"-o: {output} is a file name, but -n {count} makes {count} images; give a "
                  "directory, where each is saved as <id>.png")  # fmt: skip
        path.mkdir(parents=True, exist_ok=True)
        return None, path
    return path, None


def _connection(base_url: str | None, api_key: str | None) -> Connection:
    if not (api_key or "").strip():
        _fail(
            "no API key: set IMAGEFORGE_API_KEY (or pass --api-key); create one with "
            f"`{command_name()} keys create --name NAME`",
            code=EX_CONFIG,
        )
    return Connection(base_url=base_url, api_key=api_key)


def _run(connection: Connection, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run `work` with a client; Ctrl-C stops waiting (exit 130), errors become one line."""

    async def main() -> T:
        async with connection.client() as client:
            return await work(client)

    try:
        finished, value = run_unless_stopped(main)
    except ClientConfigurationError as error:
        _fail(str(error).replace("base_url", "--base-url / IMAGEFORGE_BASE_URL"), code=EX_CONFIG)
    except ImageforgeClientError as error:
        _fail(_message(error))
    if not finished:
        program = command_name()
        _fail(
            f"stopped; the tasks go on on the server: fetch one with `{program} result ID -o "
            f"FILE`, list them with `{program} tasks`",
            code=EXIT_STOPPED,
        )
    return value  # type: ignore[return-value]  # finished, so `work`'s own value


def _report(outcomes: list[_Outcome], as_json: bool) -> None:
    """Each saved file (or JSON line) on stdout, each failure as a line on stderr; exit 1 if
    anything failed."""
    failed = False
    for outcome in outcomes:
        if as_json and outcome.task is not None:
            print(_json_line(outcome.task, outcome.file), flush=True)
        elif outcome.file is not None:
            print(outcome.file, flush=True)
        if outcome.error is not None:
            failed = True
            _error_line(outcome.error)
    if failed:
        raise typer.Exit(1)


def _message(error: ImageforgeClientError) -> str:
    """What went wrong in one line: the server's message names the field (`size: …`)."""
    if isinstance(error, APIStatusError):
        text = error.message
        if error.param and not text.startswith(f"{error.param}:"):
            text = f"{error.param}: {text}"
        return f"{text} (HTTP {error.status_code})"
    if isinstance(error, TaskTimeoutError):
        return (
            f"{error}; it goes on: fetch it later with "
            f"`{command_name()} result {error.task_id} -o FILE`"
        )
    if isinstance(error, UnsupportedFeatureError):
        return str(error)
    return " ".join(str(error).split()) or type(error).__name__


def _describe(task: TaskResult) -> None:
    lines = [f"{task.id}  {task.status}"]
    if task.progress is not None and not task.done:
        lines[0] += f"  {task.progress:g}%"
    lines.append(f"model: {task.model}   created: {_local_time(task.created)}")
    if task.amount is not None:
        lines.append(f"amount: {task.amount}" + ("  (refunded)" if task.refunded else ""))
    if task.image_url:
        lines.append(f"image: {task.image_url}")
    if task.error:
        lines.append(f"error: {task.error}")
    # Plain print: the link is meant to be copied whole, never wrapped.
    print("\n".join(lines), flush=True)


def _json_line(task: TaskResult, file: Path | None) -> str:
    body = task.model_dump()
    if file is not None:
        body["file"] = str(file)
    return json.dumps(body, default=_json_number, ensure_ascii=False)


def _json_number(value: object) -> object:
    if isinstance(value, Decimal):
        # As the API sends it: a JSON number.
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _local_time(created: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(created).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _error_line(text: str) -> None:
    # Plain print: rich would wrap the line and read brackets as markup.
    print(f"imageforge: {text}", file=sys.stderr, flush=True)


def _fail(text: str, *, code: int = 1) -> NoReturn:
    _error_line(text)
    raise typer.Exit(code)


#: The client commands by name; `cli/app.py` registers them with the server's commands.
COMMANDS: dict[str, Callable[..., None]] = {
    "generate": generate,
    "result": result,
    "tasks": tasks,
}


def register(app: typer.Typer) -> None:
    for name, command in COMMANDS.items():
        app.command(name)(command)


def run_alone() -> None:
    """Run a client command without importing the server's commands (settings, store,
    engines): `imageforge generate` starts in half a second instead of one and a half."""
    app = typer.Typer(name="imageforge", add_completion=False)
    register(app)
    app()
