"""The size table, the `size` syntax and the four size rules (API.md, the vendor page)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageforge.errors import InvalidRequest
from imageforge.sizes import (
    EDGE_MULTIPLE,
    FOUR_K_RATIOS,
    MAX_ASPECT,
    MAX_EDGE,
    MAX_PIXELS,
    MIN_PIXELS,
    RATIOS,
    RESOLUTIONS,
    TIER_LIMITS,
    check_size,
    parse_size,
    resolution_tier,
    size_for,
)
from tests import contract_sizes as contract
from tests.contract_sizes import TABLE_ENTRIES

FOUR_K_MESSAGE = (
    "resolution: 4k is only available with ratios 16:9, 9:16, 2:1, 1:2, 21:9, 9:21 (got ratio {})"
)


def rejected(width: int, height: int) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_size(width, height)
    assert caught.value.param == "size"
    assert caught.value.code == "invalid_size"
    assert caught.value.status_code == 400
    return caught.value


# --- constants ----------------------------------------------------------------------------


def test_constants_match_the_contract() -> None:
    assert RATIOS == contract.RATIOS
    assert RESOLUTIONS == contract.RESOLUTIONS
    assert contract.FOUR_K_RATIOS == FOUR_K_RATIOS
    assert (MIN_PIXELS, MAX_PIXELS, MAX_EDGE, EDGE_MULTIPLE, MAX_ASPECT) == (
        655_360,
        8_294_400,
        3840,
        16,
        3,
    )


def test_tier_limits_are_the_largest_entries_of_each_column() -> None:
    assert TIER_LIMITS["1k"] == (2048, 2048 * 1024)
    assert TIER_LIMITS["2k"] == (2688, 2560 * 2048)
    assert TIER_LIMITS["4k"] == (3840, 3840 * 2160)


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_size_for_every_ratio_and_resolution(ratio: str, resolution: str) -> None:
    expected = contract.table_size(ratio, resolution)
    if expected is None:
        with pytest.raises(InvalidRequest) as caught:
            size_for(ratio, resolution)
        assert caught.value.param == "resolution"
        assert caught.value.code == "invalid_resolution"
        assert caught.value.message == FOUR_K_MESSAGE.format(ratio)
    else:
        assert size_for(ratio, resolution) == expected


@pytest.mark.parametrize("ratio", RATIOS)
def test_four_k_exists_exactly_for_the_four_k_ratios(ratio: str) -> None:
    assert (contract.table_size(ratio, "4k") is not None) == (ratio in FOUR_K_RATIOS)


@pytest.mark.parametrize("ratio", RATIOS)
def test_portrait_is_landscape_swapped_and_square_is_square(ratio: str) -> None:
    width, height = size_for(ratio, "1k")
    first, second = (int(part) for part in ratio.split(":"))
    assert (width > height) == (first > second)
    assert (width == height) == (first == second)


@pytest.mark.parametrize(("ratio", "resolution", "size"), TABLE_ENTRIES)
def test_every_table_entry_obeys_the_size_rules(
    ratio: str, resolution: str, size: tuple[int, int]
) -> None:
    check_size(*size)
    check_size(size[1], size[0])
    assert resolution_tier(*size) == resolution


@pytest.mark.parametrize(("ratio", "resolution", "size"), TABLE_ENTRIES)
def test_every_table_entry_is_close_to_its_ratio(
    ratio: str, resolution: str, size: tuple[int, int]
) -> None:
    # Edges are rounded to multiples of 16, so the published sizes are near, not exact.
    first, second = (int(part) for part in ratio.split(":"))
    assert abs(Fraction(size[0], size[1]) / Fraction(first, second) - 1) < Fraction(2, 100)


@pytest.mark.parametrize(
    ("ratio", "resolution", "param", "code"),
    [
        ("7:5", "1k", "ratio", "invalid_ratio"),
        ("", "1k", "ratio", "invalid_ratio"),
        ("1:1", "8k", "resolution", "invalid_resolution"),
        ("1:1", "1K", "resolution", "invalid_resolution"),  # callers normalise first
    ],
)
def test_size_for_refuses_values_outside_the_enums(
    ratio: str, resolution: str, param: str, code: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        size_for(ratio, resolution)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert caught.value.message.startswith(f"{param}: must be one of ")


# --- parse_size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024x1024", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("1024x1536", (1024, 1536)),
        ("3840x2160", (3840, 2160)),
        ("2160X3840", (2160, 3840)),
        ("  1024x1024  ", (1024, 1024)),
        ("\t2048x1152\n", (2048, 1152)),
        # Well-formed but illegal sizes parse; check_size is what refuses them.
        ("1000x1000", (1000, 1000)),
        ("99999x1", (99999, 1)),
        # Leading zeros are still plain decimal numbers.
        ("01024x01024", (1024, 1024)),
    ],
)
def test_parse_size_accepts(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "1024",
        "1024x",
        "x1024",
        "x",
        "1024*1024",
        "1024×1024",  # the multiplication sign from the docs table is not the syntax
        "1024,1024",
        "-1024x1024",
        "1024x-1024",
        "+1024x1024",
        "0x0",
        "0x1024",
        "1024x0",
        "1024.0x1024",
        "1024x1024.5",
        "1e3x1024",
        "１０２４x1024",  # full-width digits
        "1024x١٠٢٤",  # Arabic-Indic digits
        # Inner spaces are refused: the vendor's syntax is exactly "{W}x{H}".
        "1024 x 1024",
        "1024 x1024",
        "1024x 1024",
        "1024xx1024",
        "1024x1024x1024",
        "0x1024x1024",
        "1_024x1024",
        "1024x1024px",
        "9" * 13 + "x1024",  # longer than any number the rules could accept
    ],
)
def test_parse_size_refuses_malformed(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_size(text)
    assert caught.value.param == "size"
    assert caught.value.code == "invalid_size"
    assert caught.value.message == (
        f'size: must be "{{width}}x{{height}}" in pixels, e.g. "1024x1024" (got {text!r})'
    )


def test_parse_size_message_shortens_a_huge_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_size("x" * 10_000)
    assert len(caught.value.message) < 200
    assert caught.value.message.endswith("...)")


def test_parse_size_refuses_a_non_string() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_size(1024)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_size"


# --- check_size: each rule exactly at its bound and one step past -------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (1024, 1024),
        (1040, 1024),  # 16-multiples one step up
        (1024, 1040),
        (3840, 1296),  # longest edge exactly at the maximum
        (1296, 3840),
        (3072, 1024),  # exactly 3:1
        (1024, 3072),
        (2064, 688),  # exactly 3:1 with a non-round short edge
        (1024, 640),  # exactly MIN_PIXELS
        (640, 1024),
        (3840, 2160),  # exactly MAX_PIXELS
        (2160, 3840),
        (2880, 2880),  # exactly MAX_PIXELS, square
    ],
)
def test_check_size_accepts_sizes_at_every_bound(width: int, height: int) -> None:
    check_size(width, height)


@pytest.mark.parametrize(
    ("width", "height"),
    [(1000, 1000), (1032, 1024), (1024, 1032), (1025, 1024), (1024, 1023), (1024, 1016)],
)
def test_check_size_edges_must_be_multiples_of_16(width: int, height: int) -> None:
    error = rejected(width, height)
    assert error.message == f"size: both edges must be multiples of 16 (got {width}x{height})"


@pytest.mark.parametrize(
    ("width", "height"),
    [(3856, 1296), (1296, 3856), (4096, 1024), (1024, 4096), (7680, 4320)],
)
def test_check_size_longest_edge_at_most_3840(width: int, height: int) -> None:
    # 3856x1296 breaks only this rule: 16-multiples, under 3:1, within the pixel range.
    error = rejected(width, height)
    assert error.message == (
        f"size: the longest edge must be at most 3840 px (got {width}x{height})"
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [(3072, 1008), (1008, 3072), (2064, 672), (672, 2064), (3840, 1264), (2048, 672)],
)
def test_check_size_aspect_at_most_3_to_1(width: int, height: int) -> None:
    error = rejected(width, height)
    assert error.message == (
        f"size: the long edge may be at most 3 times the short edge (got {width}x{height})"
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (1024, 624),  # 16 px short of MIN_PIXELS on one edge
        (624, 1024),
        (1008, 640),
        (512, 512),
        (16, 16),
        (3840, 2176),  # 16 px past MAX_PIXELS on one edge
        (2176, 3840),
        (2896, 2880),
        (3840, 3840),
    ],
)
def test_check_size_total_pixels_in_range(width: int, height: int) -> None:
    error = rejected(width, height)
    assert error.message == (
        "size: total pixels must be between 655,360 and 8,294,400 "
        f"(got {width}x{height} = {width * height:,})"
    )


def test_check_size_messages_from_the_brief() -> None:
    assert rejected(512, 512).message == (
        "size: total pixels must be between 655,360 and 8,294,400 (got 512x512 = 262,144)"
    )
    assert rejected(1000, 1000).message == (
        "size: both edges must be multiples of 16 (got 1000x1000)"
    )


@pytest.mark.parametrize(("width", "height"), [(0, 0), (0, 1024), (1024, 0), (-1024, 1024)])
def test_check_size_refuses_edges_that_are_not_positive(width: int, height: int) -> None:
    error = rejected(width, height)
    assert error.message == f"size: both edges must be positive (got {width}x{height})"


# --- property: check_size is exactly the four rules ----------------------------------------


def obeys_the_rules(width: int, height: int) -> bool:
    """The vendor's rules, spelled out the plain way (exact fractions, no shared code)."""
    if width <= 0 or height <= 0:
        return False
    return (
        width <= 3840
        and height <= 3840
        and width % 16 == 0
        and height % 16 == 0
        and Fraction(max(width, height), min(width, height)) <= 3
        and 655_360 <= width * height <= 8_294_400
    )


# Mostly multiples of 16, so the other three rules are exercised, not just the first.
edges = st.one_of(
    st.integers(min_value=-64, max_value=4200),
    st.integers(min_value=-4, max_value=260).map(lambda k: k * 16),
    st.sampled_from([624, 640, 672, 688, 1008, 1024, 2160, 2176, 2880, 2896, 3840, 3856]),
)


@given(width=edges, height=edges)
def test_check_size_agrees_with_the_plain_rules(width: int, height: int) -> None:
    try:
        check_size(width, height)
    except InvalidRequest:
        accepted = False
    else:
        accepted = True
    assert accepted == obeys_the_rules(width, height)


#: Each rule on its own, in the vendor's order, with the words its message must contain.
SIZE_RULES: tuple[tuple[str, Callable[[int, int], bool]], ...] = (
    ("both edges must be positive", lambda w, h: w > 0 and h > 0),
    ("the longest edge must be at most 3840 px", lambda w, h: max(w, h) <= 3840),
    ("both edges must be multiples of 16", lambda w, h: w % 16 == 0 and h % 16 == 0),
    (
        "the long edge may be at most 3 times the short edge",
        lambda w, h: Fraction(max(w, h), min(w, h)) <= 3,
    ),
    (
        "total pixels must be between 655,360 and 8,294,400",
        lambda w, h: 655_360 <= w * h <= 8_294_400,
    ),
)


@given(width=edges, height=edges)
def test_an_accepted_size_keeps_every_rule_and_a_refusal_names_one_it_breaks(
    width: int, height: int
) -> None:
    broken = []
    for words, rule in SIZE_RULES:
        if not rule(width, height):
            broken.append(words)
            if words == SIZE_RULES[0][0]:
                break  # the other rules say nothing about a size without area
    try:
        check_size(width, height)
    except InvalidRequest as exc:
        assert broken, f"{width}x{height} refused though it keeps every rule: {exc.message}"
        named = [words for words in broken if words in exc.message]
        assert named, f"{exc.message!r} names none of the rules broken: {broken}"
        assert exc.message.startswith("size: ") and f"{width}x{height}" in exc.message
        assert exc.param == "size"
    else:
        assert not broken, f"{width}x{height} accepted though it breaks: {broken}"


@given(
    width=st.integers(min_value=1, max_value=10**12 - 1),
    height=st.integers(min_value=1, max_value=10**12 - 1),
)
def test_parse_size_round_trips(width: int, height: int) -> None:
    assert parse_size(f"{width}x{height}") == (width, height)
    assert parse_size(f" {width}X{height} ") == (width, height)


# --- resolution_tier ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "tier"),
    [
        (1024, 640, "1k"),
        (1024, 1024, "1k"),
        (2048, 1024, "1k"),  # the largest 1k entry
        (1024, 2048, "1k"),
        (1440, 1456, "1k"),  # just under 2,097,152
        (2064, 1024, "2k"),  # just over the largest 1k entry
        (1456, 1456, "2k"),
        (2048, 2048, "2k"),
        (2560, 2048, "2k"),  # the largest 2k entry
        (2576, 2048, "4k"),  # just over it
        (3840, 1648, "4k"),
        (3840, 2160, "4k"),
    ],
)
def test_resolution_tier(width: int, height: int, tier: str) -> None:
    assert resolution_tier(width, height) == tier
    assert resolution_tier(height, width) == tier
