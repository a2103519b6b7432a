"""Configuration errors in the operator's words: which setting, what is wrong, what to do.

Every command prints a configuration error as one line, `imageforge: <setting>: <what is
wrong>; <how to fix it>`, so this module turns pydantic's validation errors into
`ConfigurationError`s that name their setting, and names a setting the way the operator
wrote it: the environment variable when it is set there (`IMAGEFORGE_LEASE_SECONDS`),
else the key in the TOML file (`lease_seconds in imageforge.toml`).

No import of `settings.py` (which uses this module): the settings class is passed in.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from imageforge.errors import ConfigurationError

ENV_PREFIX = "IMAGEFORGE_"
#: Values of these settings are never echoed back: they may hold credentials.
_SECRET_WORDS = ("key", "secret", "password", "token", "database_url", "redis_url")


def setting_label(
    setting: str,
    *,
    top_level: Sequence[str],
    config_file: Path | None,
    environ: Mapping[str, str],
) -> str:
    """How the operator wrote (or would write) `setting`."""
    if setting.isupper() or setting == str(config_file):
        return setting  # an environment variable's own name, or the file itself
    if setting in top_level:
        variable = f"{ENV_PREFIX}{setting.upper()}"
        if variable in environ or config_file is None:
            return variable
    return f"{setting} in {config_file.name}" if config_file is not None else setting


def one_line(
    error: ConfigurationError,
    *,
    top_level: Sequence[str],
    config_file: Path | None,
    environ: Mapping[str, str],
) -> str:
    """`imageforge: <setting>: <what is wrong>; <how to fix it>`."""
    setting = error.setting or "configuration"
    label = setting_label(setting, top_level=top_level, config_file=config_file, environ=environ)
    fix = error.fix or f"fix {label} (the README's Configuration section lists every setting)"
    return f"imageforge: {label}: {error.message}; {fix}"


def from_validation_error(
    exc: ValidationError,
    settings_class: type[BaseModel],
    *,
    config_file: Path | None,
    environ: Mapping[str, str],
) -> ConfigurationError:
    """The first problem pydantic found, as a ConfigurationError naming its setting."""
    errors = exc.errors(include_url=False)
    if not errors:
        return ConfigurationError(str(exc))
    first = errors[0]
    location = tuple(first.get("loc", ()))
    setting = dotted(location) or "configuration"
    kind = str(first.get("type", ""))
    message = str(first.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "must be")
    if not location:
        # A rule across settings (a model validator) names its setting first: "s3_bucket: …".
        named, separator, rest = message.partition(": ")
        if separator and named.isidentifier() and named in settings_class.model_fields:
            location, setting, message = (named,), named, rest
    if kind == "extra_forbidden":
        known = _fields_beside(settings_class, location)
        near = difflib.get_close_matches(str(location[-1]), known, n=1)
        message = "is not a setting here" + (f" (did you mean {near[0]}?)" if near else "")
        fix = "remove it or correct its spelling" + (
            f" (known here: {', '.join(known)})" if known and not near else ""
        )
        return ConfigurationError(message, setting=setting, fix=fix)
    if kind == "missing":
        return ConfigurationError("is required", setting=setting, fix=f"set {setting}")
    shown = first.get("input")
    if _safe_to_show(setting, shown):
        message += f" (got {shown!r})"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigurationError(
        message, setting=setting, fix=_fix_for(settings_class, location, config_file, environ)
    )


def dotted(location: Sequence[Any]) -> str:
    """A pydantic location as a TOML key: `models."house".max_references`."""
    parts: list[str] = []
    previous: Any = None
    for part in location:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif previous in ("models",):
            parts.append(f'"{part}"')
        else:
            parts.append(str(part))
        previous = part
    return ".".join(parts)


def _safe_to_show(setting: str, value: Any) -> bool:
    if any(word in setting.lower() for word in _SECRET_WORDS):
        return False
    if isinstance(value, bool | int | float):
        return True
    # A URL may carry a user and password ("https://user:secret@host").
    return isinstance(value, str) and len(value) <= 80 and "@" not in value


def _fix_for(
    settings_class: type[BaseModel],
    location: tuple[Any, ...],
    config_file: Path | None,
    environ: Mapping[str, str],
) -> str:
    top_level = list(settings_class.model_fields)
    label = setting_label(
        dotted(location), top_level=top_level, config_file=config_file, environ=environ
    )
    if len(location) != 1 or location[0] not in top_level:
        return f"correct it in {config_file.name}" if config_file else "correct it"
    fix = f"set {label} to a valid value"
    default = settings_class.model_fields[str(location[0])].default
    if default is not PydanticUndefined and default is not None:
        fix += f", or unset it for the default ({default})"
    return fix


def _fields_beside(root: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """The fields of the model that holds the last part of `location`."""
    model: Any = root
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is not None and part in fields:
            model = _inner(fields[part].annotation)
        elif isinstance(model, _MappingOf):
            model = model.value
        else:
            return []
    if isinstance(model, _MappingOf):
        model = model.value
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields is not None else []


class _MappingOf:
    """A `dict[str, X]` field on the way down: its next location part is a key."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _inner(annotation: Any) -> Any:
    """The model a field holds: through `X | None`, `Annotated[X, …]` and `dict[str, X]`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _inner(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _inner(inner[0]) if len(inner) == 1 else None
    if origin is dict:
        return _MappingOf(_inner(typing.get_args(annotation)[1]))
    return annotation
