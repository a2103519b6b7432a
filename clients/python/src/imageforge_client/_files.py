"""Where a downloaded image goes on disk, and writing it so no reader sees half a file."""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath

import httpx

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}


def image_extension(response: httpx.Response) -> str:
    """From the answer's Content-Type, else the link's path, else `.png`."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in _EXTENSIONS:
        return _EXTENSIONS[media_type]
    suffix = PurePosixPath(response.request.url.path).suffix.lower()
    return suffix if suffix in _EXTENSIONS.values() or suffix == ".jpeg" else ".png"


def target_path(path: str | os.PathLike[str], task_id: str, extension: str) -> Path:
    """A directory gets `<task id><extension>` inside it; anything else is the file itself."""
    target = Path(path).expanduser()
    return target / f"{task_id}{extension}" if target.is_dir() else target


def write_atomically(target: Path, data: bytes) -> Path:
    """Write beside the target, then rename over it: the file is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stick to the image; "x" honours the umask.
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with temporary.open("xb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target
