"""Local image storage beyond the contract: durable writes, shared directory fsyncs."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from imageforge.storage import LocalStorage, UrlSigner
from imageforge.storage import local as local_module


def make_storage(root: Path) -> LocalStorage:
    return LocalStorage(root, UrlSigner(b"k" * 32))


async def test_put_writes_the_exact_bytes_under_the_key(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "images")
    data = os.urandom(300_000)
    await storage.put("2026/11/25/task-1.png", data, "image/png")
    path = storage.path_for("2026/11/25/task-1.png")
    assert path is not None and path.read_bytes() == data
    # Written in place: no temporary file is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["task-1.png"]
    await storage.aclose()


async def test_concurrent_writes_share_directory_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = local_module._fsync_directory

    def counting(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(local_module, "_fsync_directory", counting)
    storage = make_storage(tmp_path / "images")
    keys = [f"2026/11/25/task-{i}.png" for i in range(200)]
    await asyncio.gather(*(storage.put(key, key.encode(), "image/png") for key in keys))
    for key in keys:
        path = storage.path_for(key)
        assert path is not None and path.read_bytes() == key.encode()
    day = storage.root / "2026/11/25"
    assert 1 <= synced.count(day) < len(keys) // 4
    # The new directories' entries were made durable in their parents, once each.
    assert synced.count(storage.root) == 1 and synced.count(storage.root / "2026") == 1
    await storage.aclose()


async def test_a_cancelled_write_does_not_break_the_shared_fsync(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "images")
    first = asyncio.create_task(storage.put("a/1.png", b"1", "image/png"))
    second = asyncio.create_task(storage.put("a/2.png", b"2", "image/png"))
    await asyncio.sleep(0)
    first.cancel()
    await second
    assert storage.path_for("a/2.png").read_bytes() == b"2"  # type: ignore[union-attr]
    await storage.put("a/3.png", b"3", "image/png")
    await storage.aclose()


async def test_a_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make_storage(tmp_path / "images")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        await storage.put("2026/11/25/task.png", b"data", "image/png")
    monkeypatch.undo()
    assert not (storage.root / "2026/11/25/task.png").exists()
    await storage.aclose()


async def test_a_directory_removed_behind_its_back_is_made_again(tmp_path: Path) -> None:
    storage = make_storage(tmp_path / "images")
    await storage.put("2026/11/25/a.png", b"a", "image/png")
    day = storage.root / "2026/11/25"
    (day / "a.png").unlink()
    day.rmdir()
    await storage.put("2026/11/25/b.png", b"b", "image/png")
    assert (day / "b.png").read_bytes() == b"b"
    await storage.aclose()


async def test_a_read_cancelled_while_the_file_opens_leaves_no_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that hangs up while its download's file is being opened on a thread: the
    file the thread opens anyway is closed, not left to the garbage collector."""
    storage = make_storage(tmp_path / "images")
    await storage.put("2026/12/01/task-1.png", b"x" * 1000, "image/png")
    stored = await storage.open("2026/12/01/task-1.png")
    assert stored is not None
    opened: list[object] = []
    may_open = threading.Event()
    real_open = local_module._open_binary

    def slow_open(path: Path) -> object:
        may_open.wait(5)
        handle = real_open(path)
        opened.append(handle)
        return handle

    monkeypatch.setattr(local_module, "_open_binary", slow_open)
    chunks = stored.chunks()
    reading = asyncio.ensure_future(chunks.__anext__())
    await asyncio.sleep(0.05)
    reading.cancel()
    may_open.set()
    with pytest.raises(asyncio.CancelledError):
        await reading
    for _ in range(100):
        if opened and getattr(opened[0], "closed", False):
            break
        await asyncio.sleep(0.01)
    assert opened and getattr(opened[0], "closed", False)
    await storage.aclose()
