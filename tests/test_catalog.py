"""The create-request rules: models, prompt, quality, ratio x resolution, size, references."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from imageforge.catalog import (
    DEFAULT_MODELS,
    MAX_PROMPT_CHARS,
    MAX_URL_CHARS,
    URL_PATTERN,
    ModelSpec,
    ResolvedRequest,
    price_key,
    resolve_request,
)
from imageforge.errors import ConfigurationError, InvalidRequest
from tests.contract_sizes import FOUR_K_RATIOS as FOUR_K
from tests.contract_sizes import RATIOS, table_size

MODELS = ("gpt-image-2", "gpt-image-2-r")
RATIO_LIST = ", ".join(RATIOS)
GOOD_URL = "https://example.com/reference.png"


def resolve(**fields: Any) -> ResolvedRequest:
    fields.setdefault("model", "gpt-image-2")
    fields.setdefault("prompt", "a lighthouse at dusk")
    return resolve_request(**fields)


def rejection(call: Callable[[], object], *, param: str, code: str) -> str:
    """Run `call`, insist on a 400 for `param` with `code`, and return its message."""
    with pytest.raises(InvalidRequest) as caught:
        call()
    error = caught.value
    assert error.status_code == 400
    assert (error.param, error.code) == (param, code)
    assert error.message.startswith(f"{param}: ")
    return error.message


def rejected(*, param: str, code: str, **fields: Any) -> str:
    return rejection(lambda: resolve(**fields), param=param, code=code)


# --- the catalog ----------------------------------------------------------------------------


def test_default_models_follow_the_vendor_page() -> None:
    assert list(DEFAULT_MODELS) == ["gpt-image-2", "gpt-image-2-r"]
    assert DEFAULT_MODELS["gpt-image-2"] == ModelSpec(
        name="gpt-image-2",
        max_resolution="4k",
        max_references=6,
        uses_quality=True,
        billing="quality",
        engine="offline",
    )
    assert DEFAULT_MODELS["gpt-image-2-r"] == ModelSpec(
        name="gpt-image-2-r",
        max_resolution="1k",
        max_references=16,
        uses_quality=False,
        billing="resolution",
        engine="offline",
    )
    assert (MAX_PROMPT_CHARS, MAX_URL_CHARS) == (32_000, 2048)


def test_default_models_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        DEFAULT_MODELS["x"] = DEFAULT_MODELS["gpt-image-2"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_MODELS["gpt-image-2"].max_references = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"name": ""},
        {"name": " padded "},
        {"max_resolution": "8k"},
        {"max_resolution": "1K"},
        {"max_references": -1},
        {"billing": "per-image"},
        {"billing": "quality", "uses_quality": False},
    ],
)
def test_model_spec_refuses_a_bad_configuration(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "name": "m",
        "max_resolution": "2k",
        "max_references": 4,
        "uses_quality": True,
        "billing": "quality",
    }
    with pytest.raises(ConfigurationError):
        ModelSpec(**(fields | changes))


# --- defaults -------------------------------------------------------------------------------


def test_defaults_are_a_1024_square_at_low_quality() -> None:
    assert resolve() == ResolvedRequest(
        model="gpt-image-2",
        prompt="a lighthouse at dusk",
        quality="low",
        width=1024,
        height=1024,
        ratio="1:1",
        resolution="1k",
        image_urls=(),
    )


def test_defaults_for_the_r_model_have_no_quality() -> None:
    resolved = resolve(model="gpt-image-2-r")
    assert (resolved.quality, resolved.width, resolved.height) == (None, 1024, 1024)
    assert (resolved.ratio, resolved.resolution, resolved.image_urls) == ("1:1", "1k", ())


def test_explicit_nulls_are_the_defaults() -> None:
    assert (
        resolve(quality=None, ratio=None, resolution=None, size=None, image_urls=None) == resolve()
    )


def test_resolved_request_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolve().width = 1  # type: ignore[misc]


# --- every ratio x resolution x model -------------------------------------------------------


def combination_outcome(model: str, ratio: str, resolution: str) -> str | None:
    """The contract's message for a refused combination, or None when it is accepted."""
    if model == "gpt-image-2-r" and resolution != "1k":
        return f"resolution: gpt-image-2-r supports 1k only (got {resolution})"
    if resolution == "4k" and ratio not in FOUR_K:
        return (
            "resolution: 4k is only available with ratios 16:9, 9:16, 2:1, 1:2, 21:9, 9:21 "
            f"(got ratio {ratio})"
        )
    return None


@pytest.mark.parametrize("resolution", ["1k", "2k", "4k"])
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("model", MODELS)
def test_every_ratio_resolution_and_model(model: str, ratio: str, resolution: str) -> None:
    message = combination_outcome(model, ratio, resolution)
    if message is None:
        resolved = resolve(model=model, ratio=ratio, resolution=resolution)
        assert (resolved.width, resolved.height) == table_size(ratio, resolution)
        assert (resolved.ratio, resolved.resolution) == (ratio, resolution)
    else:
        got = rejected(
            model=model,
            ratio=ratio,
            resolution=resolution,
            param="resolution",
            code="invalid_resolution",
        )
        assert got == message


@pytest.mark.parametrize("resolution", ["1k", "2k", "4k"])
@pytest.mark.parametrize("ratio", sorted(FOUR_K))
def test_portrait_ratios_swap_their_landscape_pair(ratio: str, resolution: str) -> None:
    first, second = ratio.split(":")
    flipped = resolve(ratio=f"{second}:{first}", resolution=resolution)
    straight = resolve(ratio=ratio, resolution=resolution)
    assert (flipped.width, flipped.height) == (straight.height, straight.width)


@pytest.mark.parametrize("ratio", RATIOS)
def test_ratio_without_resolution_is_1k(ratio: str) -> None:
    resolved = resolve(ratio=ratio)
    assert (resolved.width, resolved.height) == table_size(ratio, "1k")
    assert resolved.resolution == "1k"


def test_a_model_capped_at_2k() -> None:
    models = {
        "mid": ModelSpec(
            name="mid", max_resolution="2k", max_references=1, uses_quality=True, billing="quality"
        )
    }
    assert resolve(model="mid", ratio="16:9", resolution="2k", models=models).width == 2048
    message = rejected(
        model="mid",
        ratio="16:9",
        resolution="4k",
        models=models,
        param="resolution",
        code="invalid_resolution",
    )
    assert message == "resolution: mid supports 1k and 2k only (got 4k)"


# --- model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("gpt-image-2", "gpt-image-2"),
        ("gpt-image-2-r", "gpt-image-2-r"),
        ("GPT-IMAGE-2", "gpt-image-2"),
        ("Gpt-Image-2-R", "gpt-image-2-r"),
        ("  gpt-image-2\n", "gpt-image-2"),
    ],
)
def test_model_names_are_trimmed_and_case_insensitive(sent: str, expected: str) -> None:
    assert resolve(model=sent).model == expected


@pytest.mark.parametrize(
    "sent", ["dall-e-3", "", "   ", "gpt-image-2 r", "gpt-image-2-rr", "gpt_image_2"]
)
def test_unknown_models_are_refused(sent: str) -> None:
    message = rejected(model=sent, param="model", code="invalid_model")
    assert message == f"model: unknown model {sent!r}; expected one of gpt-image-2, gpt-image-2-r"


def test_a_non_string_model_is_a_400() -> None:
    rejected(model=2, param="model", code="invalid_model")


def test_models_come_from_the_mapping_given() -> None:
    models = {
        "house": ModelSpec(
            name="house",
            max_resolution="1k",
            max_references=0,
            uses_quality=False,
            billing="resolution",
            engine="diffusers",
        ),
        "House-XL": ModelSpec(
            name="House-XL",
            max_resolution="4k",
            max_references=2,
            uses_quality=True,
            billing="quality",
        ),
    }
    assert resolve(model="HOUSE", models=models).model == "house"
    assert resolve(model="house-xl", models=models).model == "House-XL"
    message = rejected(model="gpt-image-2", models=models, param="model", code="invalid_model")
    assert message == "model: unknown model 'gpt-image-2'; expected one of house, House-XL"


def test_an_exact_match_wins_over_a_case_insensitive_one() -> None:
    base = DEFAULT_MODELS["gpt-image-2"]
    models = {
        "Art": dataclasses.replace(base, name="Art", max_references=1),
        "art": dataclasses.replace(base, name="art", max_references=2),
    }
    assert resolve(model="art", models=models).model == "art"
    assert resolve(model="Art", models=models).model == "Art"


# --- prompt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  \r\n", "\u3000"])
def test_an_empty_prompt_is_refused(prompt: str) -> None:
    message = rejected(prompt=prompt, param="prompt", code="invalid_prompt")
    assert message == "prompt: must not be empty"


def test_the_prompt_is_kept_as_sent() -> None:
    assert resolve(prompt="  a cat \n").prompt == "  a cat \n"


def test_a_prompt_at_the_limit_is_accepted_and_one_past_is_refused() -> None:
    assert len(resolve(prompt="a" * 32_000).prompt) == 32_000
    message = rejected(prompt="a" * 32_001, param="prompt", code="invalid_prompt")
    assert message == "prompt: must be at most 32,000 characters (got 32,001)"
    message = rejected(prompt="é" * 40_000, param="prompt", code="invalid_prompt")
    assert message == "prompt: must be at most 32,000 characters (got 40,000)"


def test_a_non_string_prompt_is_a_400() -> None:
    rejected(prompt=["a", "cat"], param="prompt", code="invalid_prompt")


# --- quality --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (None, "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("LOW", "low"),
        ("Medium", "medium"),
        (" high ", "high"),
        ("HIGH\n", "high"),
    ],
)
def test_quality_for_gpt_image_2(sent: str | None, expected: str) -> None:
    assert resolve(quality=sent).quality == expected


@pytest.mark.parametrize("sent", ["ultra", "", " ", "hd", "standard", "auto", "lowest", 3])
def test_a_bad_quality_is_refused_for_gpt_image_2(sent: object) -> None:
    message = rejected(quality=sent, param="quality", code="invalid_quality")
    assert message == f"quality: must be one of low, medium, high (got {sent!r})"


@pytest.mark.parametrize("sent", [None, "low", "HIGH", "ultra", "", "hd", 3])
def test_quality_is_ignored_for_the_r_model(sent: object) -> None:
    assert resolve(model="gpt-image-2-r", quality=sent).quality is None


# --- ratio and resolution -------------------------------------------------------------------


def test_ratio_and_resolution_are_trimmed_and_case_insensitive() -> None:
    resolved = resolve(ratio=" 16:9 ", resolution=" 4K\n")
    assert (resolved.width, resolved.height, resolved.ratio) == (3840, 2160, "16:9")
    assert resolve(ratio="2:3", resolution="2K").height == 2048


@pytest.mark.parametrize("sent", ["7:5", "", " ", "16x9", "16/9", "1:1:1", "16:10", "9 : 16", 1])
def test_a_bad_ratio_is_refused(sent: object) -> None:
    message = rejected(ratio=sent, param="ratio", code="invalid_ratio")
    assert message == f"ratio: must be one of {RATIO_LIST} (got {sent!r})"


@pytest.mark.parametrize("sent", ["8k", "", "1080p", "1", "k", "1 k", "1024", 1])
def test_a_bad_resolution_is_refused(sent: object) -> None:
    message = rejected(ratio="1:1", resolution=sent, param="resolution", code="invalid_resolution")
    assert message == f"resolution: must be one of 1k, 2k, 4k (got {sent!r})"


@pytest.mark.parametrize(
    ("model", "resolution"),
    [("gpt-image-2", "1k"), ("gpt-image-2", "2K"), ("gpt-image-2", "4k"), ("gpt-image-2-r", "1k")],
)
def test_resolution_without_ratio_is_refused(model: str, resolution: str) -> None:
    message = rejected(model=model, resolution=resolution, param="ratio", code="missing_ratio")
    assert message == "ratio: required when resolution is sent"


def test_a_bad_resolution_value_is_reported_before_the_missing_ratio() -> None:
    rejected(resolution="8k", param="resolution", code="invalid_resolution")


@pytest.mark.parametrize("resolution", ["2k", "4K"])
def test_the_models_resolution_cap_is_reported_before_the_missing_ratio(resolution: str) -> None:
    # No ratio would make 4K acceptable for gpt-image-2-r: its own rule is the one to fix.
    message = rejected(
        model="gpt-image-2-r", resolution=resolution, param="resolution", code="invalid_resolution"
    )
    assert message == f"resolution: gpt-image-2-r supports 1k only (got {resolution.lower()})"


def test_the_missing_ratio_is_reported_before_the_ratios_4k_is_offered_in() -> None:
    # Without a ratio the default 1:1 is not assumed and then refused at 4K.
    rejected(resolution="4k", param="ratio", code="missing_ratio")
    message = rejected(ratio="1:1", resolution="4k", param="resolution", code="invalid_resolution")
    assert "only available with ratios" in message


# --- size -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "tier"),
    [
        ("1024x1024", "1k"),
        ("1536x1024", "1k"),
        ("1024x1536", "1k"),
        ("2048x1024", "1k"),
        ("2048x2048", "2k"),
        ("2048x1152", "2k"),
        ("3840x2160", "4k"),
        ("2160x3840", "4k"),
        ("1024x640", "1k"),
        ("3072x1024", "2k"),
        (" 1024X1024 ", "1k"),
    ],
)
def test_size_for_gpt_image_2(size: str, tier: str) -> None:
    resolved = resolve(size=size)
    width, height = (int(edge) for edge in size.strip().lower().split("x"))
    assert (resolved.width, resolved.height) == (width, height)
    assert (resolved.ratio, resolved.resolution) == (None, tier)


@pytest.mark.parametrize("model", MODELS)
def test_size_overrides_ratio_and_resolution(model: str) -> None:
    # 1:1 at 4k is refused on its own, and -r refuses 4k outright; with a size, neither matters.
    resolved = resolve(model=model, size="1536x1024", ratio="1:1", resolution="4k")
    assert (resolved.width, resolved.height) == (1536, 1024)
    assert (resolved.ratio, resolved.resolution) == ("1:1", "1k")


def test_size_with_resolution_but_no_ratio_is_fine() -> None:
    resolved = resolve(size="1024x1536", resolution="2k")
    assert (resolved.width, resolved.height, resolved.ratio) == (1024, 1536, None)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"ratio": "7:5"}, "ratio", "invalid_ratio"),
        ({"ratio": ""}, "ratio", "invalid_ratio"),
        ({"resolution": "8k"}, "resolution", "invalid_resolution"),
        ({"ratio": "1:1", "resolution": "3k"}, "resolution", "invalid_resolution"),
    ],
)
def test_size_does_not_excuse_a_bad_enum(fields: dict[str, str], param: str, code: str) -> None:
    rejected(size="1024x1024", param=param, code=code, **fields)


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("", 'size: must be "{width}x{height}" in pixels, e.g. "1024x1024" (got \'\')'),
        ("abc", 'size: must be "{width}x{height}" in pixels, e.g. "1024x1024" (got \'abc\')'),
        ("0x0", 'size: must be "{width}x{height}" in pixels, e.g. "1024x1024" (got \'0x0\')'),
        ("1000x1000", "size: both edges must be multiples of 16 (got 1000x1000)"),
        ("4096x1024", "size: the longest edge must be at most 3840 px (got 4096x1024)"),
        (
            "3072x1008",
            "size: the long edge may be at most 3 times the short edge (got 3072x1008)",
        ),
        (
            "512x512",
            "size: total pixels must be between 655,360 and 8,294,400 (got 512x512 = 262,144)",
        ),
    ],
)
@pytest.mark.parametrize("model", MODELS)
def test_a_bad_size_is_refused(model: str, size: str, message: str) -> None:
    assert rejected(model=model, size=size, param="size", code="invalid_size") == message


def test_a_non_string_size_is_a_400() -> None:
    rejected(size=1024, param="size", code="invalid_size")


@pytest.mark.parametrize(
    "size",
    [
        "1024x1024",
        "2048x1024",  # the largest 1K size: 2048 px edge and 2,097,152 pixels, both at the cap
        "1024x2048",
        "2016x864",
        "1440x1456",  # 2,096,640 pixels, just under the cap
        "2048x688",
        "1024x640",
    ],
)
def test_the_r_model_accepts_1k_sizes(size: str) -> None:
    resolved = resolve(model="gpt-image-2-r", size=size)
    assert resolved.resolution == "1k"


@pytest.mark.parametrize(
    "size",
    [
        "2048x2048",
        "2064x688",  # legal 3:1, but 2064 px is past the 1K edge cap (pixels are fine)
        "688x2064",
        "1456x1456",  # 2,119,936 pixels: past the 1K pixel cap (edges are fine)
        "2048x1040",
        "3840x2160",
    ],
)
def test_the_r_model_refuses_sizes_larger_than_1k(size: str) -> None:
    message = rejected(model="gpt-image-2-r", size=size, param="size", code="invalid_size")
    assert message == (
        "size: gpt-image-2-r supports 1K sizes only "
        f"(at most 2048 px per edge and 2,097,152 pixels; got {size})"
    )


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        ("2688x1344", True),
        ("2560x2048", True),  # exactly the largest 2K pixel count
        ("2704x1344", False),  # edge past 2688
        ("2576x2048", False),  # pixels past 5,242,880
        ("3840x2160", False),
    ],
)
def test_a_2k_model_takes_sizes_up_to_its_2k_column(size: str, accepted: bool) -> None:
    models = {
        "mid": ModelSpec(
            name="mid", max_resolution="2k", max_references=1, uses_quality=True, billing="quality"
        )
    }
    if accepted:
        assert resolve(model="mid", size=size, models=models).resolution == "2k"
    else:
        message = rejected(model="mid", size=size, models=models, param="size", code="invalid_size")
        assert message == (
            "size: mid supports sizes up to 2K "
            f"(at most 2688 px per edge and 5,242,880 pixels; got {size})"
        )


# --- image_urls -----------------------------------------------------------------------------


def urls(count: int) -> list[str]:
    return [f"https://example.com/{index}.png" for index in range(count)]


@pytest.mark.parametrize(("model", "limit"), [("gpt-image-2", 6), ("gpt-image-2-r", 16)])
def test_reference_counts_at_and_over_the_limit(model: str, limit: int) -> None:
    assert resolve(model=model, image_urls=[]).image_urls == ()
    assert resolve(model=model, image_urls=urls(1)).image_urls == tuple(urls(1))
    assert resolve(model=model, image_urls=urls(limit)).image_urls == tuple(urls(limit))
    for count in (limit + 1, limit + 10):
        message = rejected(
            model=model, image_urls=urls(count), param="image_urls", code="too_many_references"
        )
        assert message == (
            f"image_urls: {model} accepts at most {limit} reference images (got {count})"
        )


def test_the_count_is_judged_before_the_urls() -> None:
    rejected(image_urls=["nope"] * 7, param="image_urls", code="too_many_references")


def test_image_urls_may_be_any_sequence() -> None:
    assert resolve(image_urls=tuple(urls(2))).image_urls == tuple(urls(2))


@pytest.mark.parametrize("sent", [GOOD_URL, GOOD_URL.encode()])
def test_a_bare_string_is_not_a_list_of_urls(sent: object) -> None:
    message = rejected(image_urls=sent, param="image_urls", code="invalid_image_url")
    assert message.startswith("image_urls: must be an array of URL strings (got ")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.png",
        "https://example.com:8443/a/b.png?size=large&v=2#top",
        "HTTPS://EXAMPLE.COM/A.PNG",
        "https://cdn.example.com",
        "http://127.0.0.1/a.png",  # addresses are judged at fetch time, not here
        "http://[::1]:8080/a.png",
        "http://localhost/a.png",
        "https://例え.jp/画像.png",
        "https://example.com/" + "a" * (2048 - len("https://example.com/")),  # exactly 2048
    ],
)
def test_good_reference_urls(url: str) -> None:
    assert resolve(image_urls=[url]).image_urls == (url,)
    assert re.match(URL_PATTERN, url), "the documented pattern admits every URL the rules do"


BAD_SHAPE = "must be an absolute http or https URL (got {!r})"
BAD_CHARS = "must not contain whitespace or control characters (got {!r})"
CREDENTIALS = "must not contain credentials (user:password@); use a link that needs none"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://x", BAD_SHAPE),
        ("file:///etc/passwd", BAD_SHAPE),
        ("javascript:alert(1)", BAD_SHAPE),
        ("data:image/png;base64,AAAA", BAD_SHAPE),
        ("example.com/a.png", BAD_SHAPE),
        ("//example.com/a.png", BAD_SHAPE),
        ("/a.png", BAD_SHAPE),
        ("", BAD_SHAPE),
        ("http://", BAD_SHAPE),
        ("https:///a.png", BAD_SHAPE),
        ("http://:80/a.png", BAD_SHAPE),
        ("http://[::1/a.png", BAD_SHAPE),
        ("http://example.com:99999/a.png", BAD_SHAPE),
        ("http://example.com:port/a.png", BAD_SHAPE),
        ("https//example.com/a.png", BAD_SHAPE),
        (" https://example.com/a.png", BAD_CHARS),
        ("https://example.com/a.png\n", BAD_CHARS),
        ("https://example.com/a b.png", BAD_CHARS),
        ("http:// example.com/a.png", BAD_CHARS),
        ("https://example.com/\x00.png", BAD_CHARS),
        ("https://example.com/\x7f.png", BAD_CHARS),
        ("https://exa\u200bmple.com/a.png", BAD_CHARS),  # zero-width space
        ("https://example.com/\u202egnp.exe", BAD_CHARS),  # right-to-left override
        ("https://example.com/\u00a0.png", BAD_CHARS),  # no-break space
        ("https://user:pass@example.com/a.png", CREDENTIALS),
        ("https://user@example.com/a.png", CREDENTIALS),
        ("https://:pass@example.com/a.png", CREDENTIALS),
        ("https://@example.com/a.png", CREDENTIALS),
        ("HTTP://u:p@127.0.0.1:8080/a.png", CREDENTIALS),
        ("https://example.com\\@evil.example/a.png", CREDENTIALS),
    ],
)
def test_bad_reference_urls_name_their_index(url: str, reason: str) -> None:
    sent = [GOOD_URL, GOOD_URL, url, GOOD_URL]
    message = rejected(image_urls=sent, param="image_urls[2]", code="invalid_image_url")
    assert message == "image_urls[2]: " + reason.format(url)


def test_a_url_one_past_the_length_limit_is_refused() -> None:
    url = "https://example.com/" + "a" * (2049 - len("https://example.com/"))
    message = rejected(image_urls=[url], param="image_urls[0]", code="invalid_image_url")
    assert message == "image_urls[0]: must be at most 2,048 characters (got 2,049)"


@pytest.mark.parametrize("item", [None, 7, {"url": GOOD_URL}, [GOOD_URL], GOOD_URL.encode()])
def test_a_reference_that_is_not_a_string_is_refused(item: object) -> None:
    message = rejected(image_urls=[GOOD_URL, item], param="image_urls[1]", code="invalid_image_url")
    assert message == f"image_urls[1]: must be a URL string (got {item!r})"


def test_the_first_bad_url_is_the_one_reported() -> None:
    rejected(image_urls=["ftp://a", "ftp://b"], param="image_urls[0]", code="invalid_image_url")


def test_r_model_checks_its_urls_too() -> None:
    sent = [*urls(15), "ftp://x"]
    message = rejected(
        model="gpt-image-2-r", image_urls=sent, param="image_urls[15]", code="invalid_image_url"
    )
    assert message == "image_urls[15]: must be an absolute http or https URL (got 'ftp://x')"


# --- the order fields are judged in ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "nope", "prompt": ""}, "model"),
        ({"prompt": "", "quality": "ultra"}, "prompt"),
        ({"quality": "ultra", "ratio": "7:5"}, "quality"),
        ({"ratio": "7:5", "resolution": "8k"}, "ratio"),
        ({"resolution": "8k", "size": "abc"}, "resolution"),
        ({"size": "abc", "image_urls": ["ftp://x"]}, "size"),
    ],
)
def test_fields_are_judged_in_contract_order(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(**fields)
    assert caught.value.param == param


def test_long_values_are_not_echoed_back_whole() -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(model="m" * 100_000)
    assert len(caught.value.message) < 300


# --- price_key ------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_gpt_image_2_is_priced_by_quality(quality: str) -> None:
    spec = DEFAULT_MODELS["gpt-image-2"]
    assert price_key(spec, resolve(quality=quality, ratio="16:9", resolution="4k")) == quality


@pytest.mark.parametrize(("size", "tier"), [("1024x1024", "1k"), ("2048x1024", "1k")])
def test_gpt_image_2_r_is_priced_by_resolution(size: str, tier: str) -> None:
    spec = DEFAULT_MODELS["gpt-image-2-r"]
    assert price_key(spec, resolve(model="gpt-image-2-r", quality="high", size=size)) == tier


@pytest.mark.parametrize(
    ("fields", "tier"),
    [
        ({}, "1k"),
        ({"ratio": "1:1", "resolution": "2k"}, "2k"),
        ({"ratio": "21:9", "resolution": "4k"}, "4k"),
        ({"size": "2048x2048"}, "2k"),
        ({"size": "3840x2160"}, "4k"),
    ],
)
def test_a_model_priced_by_resolution_uses_the_tier_of_the_size(
    fields: dict[str, str], tier: str
) -> None:
    spec = dataclasses.replace(DEFAULT_MODELS["gpt-image-2"], billing="resolution")
    models: Mapping[str, ModelSpec] = {"gpt-image-2": spec}
    assert price_key(spec, resolve(models=models, quality="high", **fields)) == tier


def test_price_key_refuses_a_quality_model_with_no_quality() -> None:
    resolved = resolve(model="gpt-image-2-r")
    with pytest.raises(ConfigurationError):
        price_key(DEFAULT_MODELS["gpt-image-2"], resolved)
