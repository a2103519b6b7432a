"""The SDK installs alone, into a clean virtual environment, without the server's dependencies.

Offline: the SDK's wheel is built from `clients/python` with the hatchling already installed,
and its dependencies are repacked as wheels from this environment's installed copies, so pip
in the new venv resolves from a local folder (`--no-index`) and nothing else.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "pillow", "imageforge"}


def run(*command: str | Path, cwd: Path | None = None) -> str:
    # pip reads no configuration of this machine's: only the folder it is given.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}
    env.pop("PIP_FIND_LINKS", None)
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def requirements_of(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    lines = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every installed distribution these requirements pull in (extras and markers applied)."""
    found: set[str] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        pending.extend(Requirement(text) for text in metadata.requires(name) or ())
    return found


def repack(name: str, into: Path) -> Path:
    """An installed distribution as a wheel again: its files, a fresh RECORD, its tag."""
    dist = metadata.distribution(name)
    info_dir = next(
        str(f.parent) for f in dist.files or () if str(f).endswith(".dist-info/METADATA")
    )
    tag = next(
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    )
    stem = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}"
    wheel = into / f"{stem}-{tag}.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or ():
            relative = str(file)
            skipped = ("INSTALLER", "REQUESTED", "RECORD", "direct_url.json")
            if relative.startswith("..") or "__pycache__" in relative:
                continue
            if relative.startswith(info_dir + "/") and relative.rsplit("/", 1)[1] in skipped:
                continue
            data = Path(str(file.locate())).read_bytes()
            archive.writestr(relative, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            writer.writerow([relative, f"sha256={digest.decode()}", len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        archive.writestr(f"{info_dir}/RECORD", record.getvalue())
    return wheel


def test_the_sdk_installs_alone_in_a_clean_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--wheel-dir",
        wheels,
        ROOT / "clients" / "python",
    )
    (sdk_wheel,) = wheels.glob("imageforge_client-*.whl")
    declared = {canonicalize_name(r.name) for r in requirements_of(sdk_wheel)}
    assert declared == {"httpx", "pydantic"}, declared
    for name in sorted(closure(requirements_of(sdk_wheel))):
        repack(name, wheels)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels,
        "imageforge-client")  # fmt: skip

    listed = json.loads(run(python, "-m", "pip", "list", "--format", "json"))
    installed = {canonicalize_name(item["name"]) for item in listed}
    assert {"imageforge-client", "httpx", "pydantic"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    probe = (
        "import imageforge_client as sdk, pathlib, sys;"
        "from imageforge_client import Client, AsyncClient, TaskFailedError;"
        "assert (pathlib.Path(sdk.__file__).parent / 'py.typed').is_file();"
        "assert not {'fastapi', 'PIL', 'sqlalchemy'} & set(sys.modules);"
        "print(sdk.__version__)"
    )
    version = run(python, "-c", probe, cwd=tmp_path).strip()
    assert version == metadata.version("imageforge-client")
