"""Schemathesis against the live OpenAPI document of a running `imageforge serve`.

Every operation of `/openapi.json`, with a valid key and with bad keys: no answer may be a
5xx, and every answer (status, content type, headers, body, error bodies included) must be
one the document promises. About 50 s in all (`VALID_KEY_SECONDS`, the bad keys' short
runs and the server's start).

Which operations are fuzzed and with what fixed parameters is data (`OPERATIONS`), so that
a new route needs a line here, not a new test: a long poll is pinned to a short `wait`, a
stream left out, an expensive route pinned to its cheapest input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imageforge.testing.processes import ServerProcess, create_key, run_cli

#: Per-operation rules by schemathesis's operation name ("METHOD /path"): `parameters`
#: pins a parameter ("query.wait" = 1), `enabled = False` leaves the operation out.
OPERATIONS: dict[str, dict[str, Any]] = {
    # A long poll held at most a second; the event stream never ends on a queued task.
    "GET /v1/result/{task_id}": {"parameters": {"query.wait": 1}},
    "GET /v1/result/{task_id}/events": {"enabled": False},
}
#: The fuzzed server's engine: instant and drawing nothing, so that the tasks the fuzzing
#: creates cost no CPU and the OpenAI routes, which answer once their images are done,
#: answer at once whatever `n` and size they are sent.
INSTANT_ENGINE = {
    "IMAGEFORGE_ENGINE": "imageforge.testing.engines:ChaosEngine",
    "IMAGEFORGE_CHAOS_MIN_SECONDS": "0",
    "IMAGEFORGE_CHAOS_MAX_SECONDS": "0",
}
#: Every check but `positive_data_acceptance`: it expects every schema-valid body to be
#: accepted, and a size's arithmetic (multiples of 16, pixel budget) and an Idempotency-Key
#: reused with another body are rules JSON Schema cannot state (the descriptions do).
EXCLUDED_CHECKS = ("positive_data_acceptance",)
VALID_KEY_SECONDS = 22
#: What a refused request's answer must satisfy (the rest concern accepted requests).
BAD_KEY_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
#: Keys the task API refuses: a well-formed one that does not exist (a revoked one gets the
#: same 401), and an admin-only key (403). The valid run's `ignored_auth` check also sends
#: every operation without a key and with a wrong one.
BAD_KEYS = ("unknown", "admin-only")
UNKNOWN_KEY = "ifk_0000000000000000000000000000000000000000"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return (
            "{ "
            + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
            + " }"
        )
    raise TypeError(f"no TOML for {value!r}")


def config_file(path: Path) -> Path:
    lines = ["[warnings]", "enabled = false", ""]
    for name, rules in OPERATIONS.items():
        lines += ["[[operations]]", f"include-name = {_toml_value(name)}"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in rules.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def schemathesis(
    config: Path,
    server: ServerProcess,
    authorization: str,
    *options: str,
    checks: str = "all",
) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"{server.base_url}/openapi.json",
        "--header",
        f"Authorization: {authorization}",
        "--checks",
        checks,
        "--exclude-checks",
        ",".join(EXCLUDED_CHECKS),
        *options,
        "--no-shrink",
        "--request-timeout",
        "10",
        "--seed",
        os.environ.get("IMAGEFORGE_FUZZ_SEED", "17"),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=config.parent,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with_server = ServerProcess(data, **INSTANT_ENGINE)
    try:
        yield with_server
    finally:
        with_server.terminate()


def _report(run: subprocess.CompletedProcess[str]) -> str:
    return (run.stdout + run.stderr)[-8000:]


def test_no_server_error_and_every_answer_as_documented(
    server: ServerProcess, tmp_path: Path
) -> None:
    key = create_key(server.data_dir, "fuzz")["key"]
    config = config_file(tmp_path / "schemathesis.toml")
    run = schemathesis(
        # One worker: with two, Hypothesis's threads parse lambdas' source at once, and
        # CPython 3.11 before 3.11.8 can fail that with "SystemError: AST constructor
        # recursion depth mismatch" (python/cpython#106905), failing the run for nothing.
        config,
        server,
        f"Bearer {key}",
        "--max-time",
        str(VALID_KEY_SECONDS),
        "--workers",
        "1",
    )
    assert run.returncode == 0, _report(run)
    assert "No issues found" in run.stdout, _report(run)
    # The server's own request lines agree: not one 5xx.
    assert not re.search(r"imageforge\.requests: \S+ \S+ 5\d\d ", server.output())


@pytest.mark.parametrize("authorization", BAD_KEYS)
def test_bad_keys_get_documented_answers(
    server: ServerProcess, tmp_path: Path, authorization: str
) -> None:
    if authorization == "unknown":
        key = UNKNOWN_KEY
    else:
        made = run_cli(server.data_dir, "keys", "create", "--name", "ops", "--admin", "--json")
        key = json.loads(made.stdout.strip().splitlines()[-1])["key"]
    config = config_file(tmp_path / "schemathesis.toml")
    run = schemathesis(
        config,
        server,
        f"Bearer {key}",
        # The coverage phase: every operation's boundary values, a bounded set.
        "--phases",
        "coverage",
        "--workers",
        "1",
    )
    assert run.returncode == 0, _report(run)
    assert "No issues found" in run.stdout, _report(run)
