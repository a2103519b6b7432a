"""The model catalog and the create-request rules: from the fields a client sent to one
fully resolved request (model, prompt, quality, exact size, references).

No I/O: reference URLs are judged by their syntax only; whether their host may be fetched
is decided at fetch time, where the address is actually resolved.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from imageforge.errors import ConfigurationError, InvalidRequest
from imageforge.sizes import (
    RATIOS,
    RESOLUTIONS,
    TIER_LIMITS,
    check_size,
    parse_size,
    resolution_tier,
    size_for,
)

QUALITIES: tuple[str, ...] = ("low", "medium", "high")
DEFAULT_QUALITY = "low"
DEFAULT_RATIO = "1:1"
DEFAULT_RESOLUTION = "1k"
BILLINGS: tuple[str, ...] = ("quality", "resolution")

MAX_PROMPT_CHARS = 32_000
MAX_URL_CHARS = 2048
#: The shape of an acceptable reference URL, as the API document states it: http or
#: https, a host without credentials (`user:pass@`), no whitespace or control character
#: anywhere. `_url_problem` checks each part with its own message, and this last.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00-\x1f\x7f/?#@]+([/?#][^\s\x00-\x1f\x7f]*)?$"
_URL_SHAPE = re.compile(URL_PATTERN)


@dataclass(frozen=True)
class ModelSpec:
    """One public model name and what it accepts; built from configuration."""

    name: str
    max_resolution: str  #: the highest resolution tier: "1k" | "2k" | "4k"
    max_references: int  #: how many image_urls one request may carry
    uses_quality: bool  #: False: quality is ignored (never rejected) and resolves to None
    billing: str  #: "quality" | "resolution": which tier picks the price
    engine: str = "offline"  #: the engine this model routes to

    def __post_init__(self) -> None:
        # Models come from a config file, so a bad entry must fail at start-up, not per request.
        table = f'models."{self.name}"'
        if not self.name or self.name != self.name.strip():
            raise ConfigurationError(
                f"model name {self.name!r} must be non-empty and trimmed",
                setting=table,
                fix="name the model without surrounding spaces",
            )
        if self.max_resolution not in RESOLUTIONS:
            raise ConfigurationError(
                f"must be one of {', '.join(RESOLUTIONS)} (got {self.max_resolution!r})",
                setting=f"{table}.max_resolution",
            )
        if self.max_references < 0:
            raise ConfigurationError(
                f"must be 0 or more (got {self.max_references})",
                setting=f"{table}.max_references",
            )
        if self.billing not in BILLINGS:
            raise ConfigurationError(
                f"must be one of {', '.join(BILLINGS)} (got {self.billing!r})",
                setting=f"{table}.billing",
            )
        if self.billing == "quality" and not self.uses_quality:
            raise ConfigurationError(
                "billing by quality needs a model that uses quality",
                setting=f"{table}.billing",
                fix='set uses_quality = true, or billing = "resolution"',
            )


#: A configured model of a new name inherits every field it leaves unset from this one,
#: its prices included (settings.py, billing.py).
BASE_MODEL = "gpt-image-2"

# The two variants the vendor page describes (its "Models" table).
DEFAULT_MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        "gpt-image-2": ModelSpec(
            name="gpt-image-2",
            max_resolution="4k",
            max_references=6,
            uses_quality=True,
            billing="quality",
        ),
        "gpt-image-2-r": ModelSpec(
            name="gpt-image-2-r",
            max_resolution="1k",
            max_references=16,
            uses_quality=False,
            billing="resolution",
        ),
    }
)


@dataclass(frozen=True)
class ResolvedRequest:
    """A create request after every rule passed and every default was applied."""

    model: str  #: the catalog's spelling of the model name
    prompt: str  #: as sent (not trimmed)
    quality: str | None  #: "low" | "medium" | "high"; None when the model ignores quality
    width: int
    height: int
    ratio: str | None  #: the ratio sent or defaulted; None when only a size was sent
    resolution: str  #: resolution_tier(width, height), whichever way the size was chosen
    image_urls: tuple[str, ...]


def _quoted(value: object, limit: int = 80) -> str:
    """repr() for an error message, cut short so a huge input is never echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_of(field: str, value: str, choices: Sequence[str], code: str) -> str:
    """`value` trimmed and lower-cased if it is one of `choices`, else a 400 naming them."""
    # The API layer types these fields, but a non-string must still be a 400, never a 500.
    normalised = value.strip().lower() if isinstance(value, str) else ""
    if normalised in choices:
        return normalised
    raise InvalidRequest(
        f"{field}: must be one of {', '.join(choices)} (got {_quoted(value)})",
        param=field,
        code=code,
    )


def _resolve_model(model: str, models: Mapping[str, ModelSpec]) -> ModelSpec:
    name = model.strip() if isinstance(model, str) else ""
    spec = models.get(name)
    if spec is None:
        by_lower = {key.lower(): value for key, value in models.items()}
        spec = by_lower.get(name.lower())
    if spec is None:
        raise InvalidRequest(
            f"model: unknown model {_quoted(model)}; expected one of {', '.join(models)}",
            param="model",
            code="invalid_model",
        )
    return spec


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str):
        raise InvalidRequest(
            f"prompt: must be a string (got {_quoted(prompt)})",
            param="prompt",
            code="invalid_prompt",
        )
    if not prompt.strip():
        raise InvalidRequest("prompt: must not be empty", param="prompt", code="invalid_prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"prompt: must be at most {MAX_PROMPT_CHARS:,} characters (got {len(prompt):,})",
            param="prompt",
            code="invalid_prompt",
        )


def _resolutions_up_to(resolution: str) -> tuple[str, ...]:
    return RESOLUTIONS[: RESOLUTIONS.index(resolution) + 1]


def _check_model_resolution(spec: ModelSpec, resolution: str) -> None:
    allowed = _resolutions_up_to(spec.max_resolution)
    if resolution not in allowed:
        raise InvalidRequest(
            f"resolution: {spec.name} supports {' and '.join(allowed)} only (got {resolution})",
            param="resolution",
            code="invalid_resolution",
        )


def _check_model_size(spec: ModelSpec, width: int, height: int) -> None:
    """A model capped below 4K takes no size larger than its top tier's table sizes."""
    limit = TIER_LIMITS[spec.max_resolution]
    if max(width, height) <= limit.max_edge and width * height <= limit.max_pixels:
        return
    tier = spec.max_resolution.upper()
    scope = f"{tier} sizes only" if spec.max_resolution == RESOLUTIONS[0] else f"sizes up to {tier}"
    raise InvalidRequest(
        f"size: {spec.name} supports {scope} (at most {limit.max_edge} px per edge and "
        f"{limit.max_pixels:,} pixels; got {width}x{height})",
        param="size",
        code="invalid_size",
    )


def _url_problem(url: object) -> str | None:
    """Why `url` is not an acceptable reference URL, or None when it is."""
    if not isinstance(url, str):
        return f"must be a URL string (got {_quoted(url)})"
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS:,} characters (got {len(url):,})"
    # Whitespace and invisible characters are where URL parsers disagree with each other
    # (and with the fetcher), so they are refused rather than cleaned up.
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        return f"must not contain whitespace or control characters (got {_quoted(url)})"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"must be an absolute http or https URL (got {_quoted(url)})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"must be an absolute http or https URL (got {_quoted(url)})"
    # Credentials in a URL end up in logs and in whatever the URL is shown to; the fetch
    # would refuse them, so the create does, before the task is charged.
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials (user:password@); use a link that needs none"
    if _URL_SHAPE.match(url) is None:
        return f"must be an absolute http or https URL (got {_quoted(url)})"
    return None


def check_callback_url(url: object) -> str:
    """The syntax of a webhook URL (the rules of a reference URL); where it points is the
    outbound guard's to decide."""
    problem = _url_problem(url)
    if problem is not None:
        raise InvalidRequest(
            f"callback_url: {problem}", param="callback_url", code="invalid_callback_url"
        )
    assert isinstance(url, str)
    return url


def _check_image_urls(spec: ModelSpec, image_urls: Sequence[str] | None) -> tuple[str, ...]:
    if image_urls is None:
        return ()
    # A bare string is a Sequence[str] too; iterating it would judge it one letter at a time.
    if isinstance(image_urls, str | bytes):
        raise InvalidRequest(
            f"image_urls: must be an array of URL strings (got {_quoted(image_urls)})",
            param="image_urls",
            code="invalid_image_url",
        )
    urls = tuple(image_urls)
    _check_reference_count(spec, len(urls), "image_urls")
    for index, url in enumerate(urls):
        problem = _url_problem(url)
        if problem is not None:
            raise InvalidRequest(
                f"image_urls[{index}]: {problem}",
                param=f"image_urls[{index}]",
                code="invalid_image_url",
            )
    return urls


def resolve_request(
    *,
    model: str,
    prompt: str,
    quality: str | None = None,
    ratio: str | None = None,
    resolution: str | None = None,
    size: str | None = None,
    image_urls: Sequence[str] | None = None,
    models: Mapping[str, ModelSpec] = DEFAULT_MODELS,
    uploaded: Sequence[str] = (),
) -> ResolvedRequest:
    """Apply every create-request rule and default; raise InvalidRequest on the first
    violation.

    The order (docs/ARCHITECTURE.md, "Contract choices"): each field's own value, in the
    contract's field order (model, prompt, quality, ratio, resolution); then the rules that
    combine fields, most specific first: with `size`, its syntax, its four rules and the
    model's size cap; without it, the model's resolution cap, `ratio` required with
    `resolution`, and the ratios a resolution is offered in; `image_urls` last.

    `uploaded`: references the server stored for the client (`references.stored`), already
    checked; they follow the URLs in `image_urls` and count against the model's limit."""
    spec = _resolve_model(model, models)
    _check_prompt(prompt)

    resolved_quality: str | None = None
    if spec.uses_quality:
        resolved_quality = (
            DEFAULT_QUALITY
            if quality is None
            else one_of("quality", quality, QUALITIES, "invalid_quality")
        )

    # Enum values are judged even when `size` overrides them: a bad value is a client bug.
    sent_ratio = None if ratio is None else one_of("ratio", ratio, RATIOS, "invalid_ratio")
    sent_resolution = (
        None
        if resolution is None
        else one_of("resolution", resolution, RESOLUTIONS, "invalid_resolution")
    )

    if size is not None:
        width, height = parse_size(size)
        check_size(width, height)
        _check_model_size(spec, width, height)
        used_ratio = sent_ratio
    else:
        used_resolution = sent_resolution or DEFAULT_RESOLUTION
        # The most specific rule first: a resolution the model never offers is wrong
        # whatever ratio comes with it, so it is reported before the missing ratio.
        _check_model_resolution(spec, used_resolution)
        if sent_resolution is not None and sent_ratio is None:
            raise InvalidRequest(
                "ratio: required when resolution is sent", param="ratio", code="missing_ratio"
            )
        used_ratio = sent_ratio or DEFAULT_RATIO
        width, height = size_for(used_ratio, used_resolution)

    return ResolvedRequest(
        model=spec.name,
        prompt=prompt,
        quality=resolved_quality,
        width=width,
        height=height,
        ratio=used_ratio,
        resolution=resolution_tier(width, height),
        image_urls=_check_image_urls(spec, image_urls) + _check_uploaded(spec, uploaded),
    )


def _check_uploaded(spec: ModelSpec, uploaded: Sequence[str]) -> tuple[str, ...]:
    _check_reference_count(spec, len(uploaded), "image")
    return tuple(uploaded)


def _check_reference_count(spec: ModelSpec, count: int, field: str) -> None:
    if count > spec.max_references:
        raise InvalidRequest(
            f"{field}: {spec.name} accepts at most {spec.max_references} reference images "
            f"(got {count})",
            param=field,
            code="too_many_references",
        )


def price_key(spec: ModelSpec, resolved: ResolvedRequest) -> str:
    """The tier that picks the price: the quality or the resolution, as the model is billed."""
    if spec.billing == "resolution":
        return resolved.resolution
    if resolved.quality is None:
        # ModelSpec refuses billing by quality without uses_quality, so this is a mismatch
        # between the spec and the request it is asked to price.
        raise ConfigurationError(
            "billed by quality but quality is unset", setting=f'models."{spec.name}".billing'
        )
    return resolved.quality


def billing_tiers(spec: ModelSpec) -> tuple[str, ...]:
    """Every tier `price_key` can return for this model: what a price table must cover."""
    if spec.billing == "resolution":
        return _resolutions_up_to(spec.max_resolution)
    return QUALITIES
