"""Tiny random diffusers model folders, built once per test session.

No weights can be downloaded here, so the folders are built from tiny architectures (a few MB,
milliseconds per step), saved with `save_pretrained`, and loaded by the engine exactly as a
user's folder would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class TinyFolders:
    sd: Path
    #: The SD folder plus an IP-Adapter in its ip_adapter/ subfolder.
    sd_ip_adapter: Path
    sdxl: Path


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyFolders]:
    pytest.importorskip("diffusers", reason="the local extra is not installed")
    import torch

    from imageforge.engines.diffusers.random_models import TINY_SD, TINY_SDXL, save_model_folder

    # One thread: steadier step times on a shared 2-core machine, and no oversubscription
    # beside the test process's own threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("diffusers")
    yield TinyFolders(
        sd=save_model_folder(TINY_SD, root / "tiny-sd-turbo"),
        sd_ip_adapter=save_model_folder(TINY_SD, root / "tiny-sd-turbo-ip", ip_adapter=True),
        sdxl=save_model_folder(TINY_SDXL, root / "tiny-sdxl-turbo", seed=1),
    )
    torch.set_num_threads(threads)


def tiny_config(folder: Path, **changes: Any) -> dict[str, Any]:
    """A `[models.NAME.diffusers]` table for a tiny folder: CPU, generations at about 64²."""
    config: dict[str, Any] = {"path": str(folder), "device": "cpu", "base_size": 64}
    config.update(changes)
    return config
