"""Output sizes: the ratio x resolution table, the `size` syntax and its four rules.

Pure functions over `(width, height)` integers; every violation is an `InvalidRequest`
whose message names the field, the rule and the value that broke it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from imageforge.errors import InvalidRequest

# Contract order: error messages list the choices in this order, as the vendor page does.
RATIOS: tuple[str, ...] = (
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "5:4",
    "4:5",
    "2:1",
    "1:2",
    "21:9",
    "9:21",
)
RESOLUTIONS: tuple[str, ...] = ("1k", "2k", "4k")
# The vendor limits 4K to these ratios because the others would exceed MAX_PIXELS.
FOUR_K_RATIOS: frozenset[str] = frozenset({"16:9", "9:16", "2:1", "1:2", "21:9", "9:21"})

MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_EDGE = 3840
EDGE_MULTIPLE = 16
MAX_ASPECT = 3

# Landscape sizes per ratio and resolution, exactly as the contract (API.md) publishes them;
# portrait ratios reuse them swapped. A missing resolution: the ratio is not offered at that tier.
_LANDSCAPE_SIZES: Mapping[str, Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        "1:1": {"1k": (1024, 1024), "2k": (2048, 2048)},
        "3:2": {"1k": (1536, 1024), "2k": (2048, 1360)},
        "4:3": {"1k": (1024, 768), "2k": (2048, 1536)},
        "5:4": {"1k": (1280, 1024), "2k": (2560, 2048)},
        "16:9": {"1k": (1536, 864), "2k": (2048, 1152), "4k": (3840, 2160)},
        "2:1": {"1k": (2048, 1024), "2k": (2688, 1344), "4k": (3840, 1920)},
        "21:9": {"1k": (2016, 864), "2k": (2688, 1152), "4k": (3840, 1648)},
    }
)

# Full-width digits and other Unicode numerals are refused on purpose: `\d` would accept them.
# Twelve digits is far beyond any legal edge yet keeps int() away from giant strings.
_SIZE_PATTERN = re.compile(r"([0-9]{1,12})[xX]([0-9]{1,12})")
#: `parse_size`'s syntax as the API document states it (JSON Schema, unanchored).
SIZE_PATTERN = rf"^\s*{_SIZE_PATTERN.pattern}\s*$"


class TierLimit(NamedTuple):
    """The largest size of one resolution tier, taken from that tier's table column."""

    max_edge: int
    max_pixels: int


def _quoted(value: object, limit: int = 80) -> str:
    """repr() for an error message, cut short so a huge input is never echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _landscape_ratio(ratio: str) -> tuple[str, bool]:
    """The table key for `ratio`, and whether the pair must be swapped (portrait)."""
    if ratio in _LANDSCAPE_SIZES:
        return ratio, False
    width_part, _, height_part = ratio.partition(":")
    return f"{height_part}:{width_part}", True


def _column(resolution: str) -> list[tuple[int, int]]:
    return [sizes[resolution] for sizes in _LANDSCAPE_SIZES.values() if resolution in sizes]


# Derived rather than written down, so the limits can never drift from the table.
TIER_LIMITS: Mapping[str, TierLimit] = MappingProxyType(
    {
        resolution: TierLimit(
            max_edge=max(max(size) for size in _column(resolution)),
            max_pixels=max(w * h for w, h in _column(resolution)),
        )
        for resolution in RESOLUTIONS
    }
)


def size_for(ratio: str, resolution: str) -> tuple[int, int]:
    """The `(width, height)` the table gives for a normalised ratio and resolution."""
    if ratio not in RATIOS:
        raise InvalidRequest(
            f"ratio: must be one of {', '.join(RATIOS)} (got {_quoted(ratio)})",
            param="ratio",
            code="invalid_ratio",
        )
    if resolution not in RESOLUTIONS:
        raise InvalidRequest(
            f"resolution: must be one of {', '.join(RESOLUTIONS)} (got {_quoted(resolution)})",
            param="resolution",
            code="invalid_resolution",
        )
    key, portrait = _landscape_ratio(ratio)
    landscape = _LANDSCAPE_SIZES[key].get(resolution)
    if landscape is None:
        allowed = ", ".join(r for r in RATIOS if r in FOUR_K_RATIOS)
        raise InvalidRequest(
            f"resolution: {resolution} is only available with ratios {allowed} (got ratio {ratio})",
            param="resolution",
            code="invalid_resolution",
        )
    width, height = landscape
    return (height, width) if portrait else (width, height)


def parse_size(text: str) -> tuple[int, int]:
    """Parse `"{W}x{H}"`; outer whitespace and an upper-case X are tolerated, nothing else."""
    # Not a string at all (a JSON number, say) is just another malformed size, not a crash.
    match = _SIZE_PATTERN.fullmatch(text.strip()) if isinstance(text, str) else None
    width, height = (int(match[1]), int(match[2])) if match else (0, 0)
    # A zero edge is as meaningless as a missing one, so it gets the same "malformed" answer.
    if width <= 0 or height <= 0:
        raise InvalidRequest(
            'size: must be "{width}x{height}" in pixels, e.g. "1024x1024" '
            f"(got {_quoted(text)})",
            param="size",
            code="invalid_size",
        )
    return width, height


def _size_error(message: str) -> InvalidRequest:
    return InvalidRequest(f"size: {message}", param="size", code="invalid_size")


def check_size(width: int, height: int) -> None:
    """Enforce the vendor's size rules, in the order the vendor page lists them."""
    got = f"{width}x{height}"
    if width <= 0 or height <= 0:
        raise _size_error(f"both edges must be positive (got {got})")
    long_edge, short_edge = max(width, height), min(width, height)
    if long_edge > MAX_EDGE:
        raise _size_error(f"the longest edge must be at most {MAX_EDGE} px (got {got})")
    if width % EDGE_MULTIPLE or height % EDGE_MULTIPLE:
        raise _size_error(f"both edges must be multiples of {EDGE_MULTIPLE} (got {got})")
    # Integer comparison: a float ratio would misjudge sizes sitting exactly at 3:1.
    if long_edge > MAX_ASPECT * short_edge:
        raise _size_error(
            f"the long edge may be at most {MAX_ASPECT} times the short edge (got {got})"
        )
    pixels = width * height
    if not MIN_PIXELS <= pixels <= MAX_PIXELS:
        raise _size_error(
            f"total pixels must be between {MIN_PIXELS:,} and {MAX_PIXELS:,} "
            f"(got {got} = {pixels:,})"
        )


def resolution_tier(width: int, height: int) -> str:
    """The resolution tier a size is billed as: the smallest tier whose largest table size
    has at least as many pixels."""
    pixels = width * height
    for resolution in RESOLUTIONS[:-1]:
        if pixels <= TIER_LIMITS[resolution].max_pixels:
            return resolution
    return RESOLUTIONS[-1]
