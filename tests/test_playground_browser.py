"""The playground end to end in headless Chromium (Debian's `chromium` package, driven by
Playwright; no browser is downloaded): submit a prompt, watch the image arrive at the asked
aspect, errors next to their field, on a desktop and a phone-sized screen.

Screenshots land in `test-artifacts/playground/` (or `$IMAGEFORGE_TEST_ARTIFACTS/playground`).
Without Chromium the tests skip, saying how to enable them; with `IMAGEFORGE_REQUIRE_CHROMIUM=1`
(as `.ci/run` sets) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from imageforge.api.routes.playground import install_playground
from imageforge.testing.processes import ServerProcess, create_key, run_cli
from tests.sdk_servers import serve_imageforge
from tests.sdk_task_api import StandInTaskAPI, Switches, serve_task_api

ROOT = Path(__file__).resolve().parents[1]
#: Chromium flags for a sandboxed CI box: no GPU, no sandbox, nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: Generous for a loaded 2-core machine: the offline engine draws a 1K image in well under 1 s.
IMAGE_TIMEOUT_MS = 60_000


def chromium_executable() -> str:
    found = os.environ.get("IMAGEFORGE_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    message = (
        "Chromium is not installed, so the playground's browser tests cannot run; install "
        "Debian's package to enable them: apt-get install chromium (or set "
        "IMAGEFORGE_CHROMIUM to a Chromium binary)"
    )
    if os.environ.get("IMAGEFORGE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(message)
    pytest.skip(message)


def artifacts_dir() -> Path:
    base = Path(os.environ.get("IMAGEFORGE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    target = base / "playground"
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_imageforge(tmp_path_factory, "playground-browser")


@pytest.fixture(scope="module")
def api_key(server: ServerProcess) -> str:
    key: str = create_key(server.data_dir, "browser")["key"]
    return key


def open_page(browser: Browser, base_url: str, viewport: dict[str, int]) -> tuple[Page, list[str]]:
    """The playground, ready; and the script errors and console errors it logs."""
    context = browser.new_context(
        viewport=viewport,  # type: ignore[arg-type]
        is_mobile=viewport["width"] < 600,
        has_touch=viewport["width"] < 600,
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    page.goto(f"{base_url}/playground")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page, problems


def enter_key(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Tab")


def generate(page: Page, ratio: str, expected_size: tuple[int, int]) -> None:
    """Pick the ratio, see its quote, submit, and wait for the image at that size and aspect."""
    width, height = expected_size
    page.get_by_label("Ratio", exact=True).select_option(ratio)
    expect(page.locator("#quote")).to_contain_text(f"{width} × {height} px")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("status", name="Task status")).to_contain_text(
        "Completed", timeout=IMAGE_TIMEOUT_MS
    )
    image = page.locator("#result-image")
    expect(image).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('result-image');"
        " return i.complete && i.naturalWidth > 0; }",
        timeout=IMAGE_TIMEOUT_MS,
    )
    natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [width, height]
    box = image.bounding_box()
    assert box is not None
    assert abs(box["width"] / box["height"] - width / height) < 0.02, box
    link = page.get_by_role("link", name="Open full size")
    assert link.get_attribute("href") == image.get_attribute("src")
    assert page.get_by_role("link", name="Download").get_attribute("download", timeout=1000)


def assert_fits_the_screen(page: Page) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px"


def test_generate_on_a_desktop(browser: Browser, server: ServerProcess, api_key: str) -> None:
    page, problems = open_page(browser, server.base_url, DESKTOP)
    enter_key(page, api_key)
    expect(page.locator("#balance")).to_contain_text("unlimited credit")
    generate(page, "16:9", (1536, 864))
    # The gallery (this browser's history: imageforge does not list tasks yet) has it.
    expect(page.locator("#gallery img")).to_have_count(1)
    expect(page.locator("#balance")).to_contain_text("on 1 task in the last 30 days")
    assert_fits_the_screen(page)
    page.screenshot(path=artifacts_dir() / "desktop.png", full_page=True)

    # The key stays in this browser: after a reload the gallery is there again.
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(api_key)
    expect(page.locator("#gallery img")).to_have_count(1)
    assert problems == []
    page.context.close()


def test_errors_show_next_to_their_field(
    browser: Browser, server: ServerProcess, api_key: str
) -> None:
    page, problems = open_page(browser, server.base_url, DESKTOP)
    enter_key(page, api_key)
    page.get_by_label("Exact size").check()
    expect(page.get_by_label("Ratio", exact=True)).to_be_hidden()
    page.get_by_label("Width × height in pixels").fill("1000x1000")
    page.get_by_role("button", name="Generate").click()
    size_error = page.locator("#size-error")
    expect(size_error).to_be_visible()
    expect(size_error).to_contain_text("size: both edges must be multiples of 16")
    expect(page.locator("#size")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#size")).to_be_focused()
    page.screenshot(path=artifacts_dir() / "error.png", full_page=True)

    page.get_by_label("Width × height in pixels").fill("1536x1024")
    expect(page.locator("#quote")).to_contain_text("1536 × 1024 px")
    expect(size_error).to_be_hidden()

    # A key without credit: said under the button, in plain words, and nothing is created.
    broke = run_cli(server.data_dir, "keys", "create", "--name", "broke", "--credits", "0",
                    "--json")  # fmt: skip
    enter_key(page, json.loads(broke.stdout.strip().splitlines()[-1])["key"])
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_contain_text("Not enough credit on this key")
    expect(page.get_by_role("status", name="Task status")).to_contain_text("Not created")

    enter_key(page, "ifk_" + "x" * 38)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#api-key-error")).to_contain_text("This API key is not valid")
    # The browser logged the refused requests, and nothing else (no script error, no CSP block).
    refused = tuple(f"status of {status}" for status in ("400 (Bad Request)",
                    "401 (Unauthorized)", "402 (Payment Required)"))  # fmt: skip
    unexpected = [problem for problem in problems if not problem.endswith(refused)]
    assert unexpected == []
    page.context.close()


def test_the_choices_follow_the_models_rules(
    browser: Browser, server: ServerProcess, api_key: str
) -> None:
    """gpt-image-2-r is 1K only and ignores quality, as the API document and the quote say."""
    page, problems = open_page(browser, server.base_url, DESKTOP)
    enter_key(page, api_key)
    models = page.get_by_label("Model").locator("option").all_text_contents()
    assert models == ["gpt-image-2", "gpt-image-2-r"]
    page.get_by_label("Ratio", exact=True).select_option("16:9")
    four_k = page.locator("#resolution option[value='4k']")
    expect(four_k).to_be_enabled()
    page.get_by_label("Model").select_option("gpt-image-2-r")
    expect(page.locator("#resolution option[value='2k']")).to_be_disabled()
    expect(four_k).to_be_disabled()
    expect(page.locator("#quote")).to_contain_text("1536 × 864 px")
    expect(page.locator("#quality-hint")).to_be_visible()
    page.get_by_label("Model").select_option("gpt-image-2")
    page.get_by_label("Ratio", exact=True).select_option("4:3")
    expect(four_k).to_be_disabled()  # 4K only in the widest ratios
    # Ctrl+Enter in the prompt submits.
    page.get_by_label("Prompt").press("Control+Enter")
    status = page.get_by_role("status", name="Task status")
    expect(status).to_contain_text("Completed", timeout=IMAGE_TIMEOUT_MS)
    assert problems == []
    page.context.close()


def test_generate_on_a_phone(browser: Browser, server: ServerProcess, api_key: str) -> None:
    page, problems = open_page(browser, server.base_url, PHONE)
    enter_key(page, api_key)
    generate(page, "9:16", (864, 1536))
    assert_fits_the_screen(page)
    # Everything reachable with a thumb: no control narrower than 44 px tall.
    heights = page.eval_on_selector_all(
        "button, select, input:not([type=radio])",
        "els => els.filter(e => e.offsetParent !== null).map(e => e.offsetHeight)",
    )
    assert min(heights) >= 44, heights
    page.screenshot(path=artifacts_dir() / "phone.png", full_page=True)
    assert problems == []
    page.context.close()


@pytest.fixture
def task_api() -> Iterator[StandInTaskAPI]:
    # A step of a second: the page must show 50 % while it lasts, on a busy machine too
    # (at 0.3 s, CI's page once went from 0 % to 100 %).
    with serve_task_api(Switches(), step_seconds=1.0) as api:
        # The same page on a server with the lifecycle extensions (and no quote or usage).
        install_playground(api.app)
        yield api


def test_with_events_and_listing_the_page_uses_them(
    browser: Browser, task_api: StandInTaskAPI
) -> None:
    page, problems = open_page(browser, task_api.base_url, DESKTOP)
    enter_key(page, "sk-stand-in")
    page.get_by_role("button", name="Generate").click()
    status = page.get_by_role("status", name="Task status")
    expect(status).to_contain_text("Processing 50%", timeout=IMAGE_TIMEOUT_MS)
    expect(page.locator("#progress")).to_have_attribute("value", "50")
    expect(status).to_contain_text("Completed", timeout=IMAGE_TIMEOUT_MS)
    expect(page.locator("#result-image")).to_be_visible()
    assert task_api.counts["events"] == 1 and task_api.counts["poll"] == 0, task_api.counts
    assert task_api.counts["create"] == 1
    # The gallery is the server's listing, not this browser's history.
    expect(page.locator("#gallery-source")).to_have_text("This key's latest tasks.")
    expect(page.locator("#gallery img")).to_have_count(1)
    assert page.locator("#quote").text_content() == "", "no quote route: no price shown"
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()

    # A task that never ends on its own: the Cancel button ends it.
    page.get_by_label("Prompt").fill("hold on")
    page.get_by_role("button", name="Generate").click()
    expect(status).to_contain_text("Processing 100%", timeout=IMAGE_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel").click()
    expect(status).to_contain_text("Failed: cancelled by the client", timeout=IMAGE_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator("#gallery .badge.failed")).to_have_count(1)
    assert problems == []
    page.context.close()


def test_with_long_poll_only_the_page_holds_its_polls(browser: Browser) -> None:
    switches = Switches(events=False, cancel=False, listing=False)
    with serve_task_api(switches, step_seconds=0.3) as api:
        install_playground(api.app)
        page, problems = open_page(browser, api.base_url, DESKTOP)
        enter_key(page, "sk-stand-in")
        page.get_by_role("button", name="Generate").click()
        status = page.get_by_role("status", name="Task status")
        expect(status).to_contain_text("Completed", timeout=IMAGE_TIMEOUT_MS)
        assert api.counts["events"] == 0 and api.counts["wait"] >= 1, api.counts
        # No listing: the gallery is this browser's history.
        expect(page.locator("#gallery-source")).to_contain_text("made from this browser")
        expect(page.locator("#gallery img")).to_have_count(1)
        assert problems == []
        page.context.close()
