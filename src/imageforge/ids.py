"""Typed, prefixed identifiers. A prefix tells a reader what an id names at a glance."""

from __future__ import annotations

import secrets
import uuid
from typing import NewType

TaskId = NewType("TaskId", str)
KeyId = NewType("KeyId", str)

TASK_PREFIX = "image_"
KEY_PREFIX = "key_"


def new_task_id() -> TaskId:
    # The contract fixes the shape: "image_" + a UUID4.
    return TaskId(f"{TASK_PREFIX}{uuid.uuid4()}")


def new_key_id() -> KeyId:
    return KeyId(f"{KEY_PREFIX}{secrets.token_hex(8)}")


def looks_like_task_id(text: str) -> bool:
    """Cheap shape check so garbage ids never reach the database."""
    if not text.startswith(TASK_PREFIX) or len(text) != len(TASK_PREFIX) + 36:
        return False
    try:
        uuid.UUID(text[len(TASK_PREFIX) :])
    except ValueError:
        return False
    return True
