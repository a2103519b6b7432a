"""The README says what the code does: its size table is the code's, cell for cell."""

from __future__ import annotations

import re
from pathlib import Path

from imageforge.catalog import DEFAULT_QUALITY, DEFAULT_RATIO, DEFAULT_RESOLUTION
from imageforge.errors import InvalidRequest
from imageforge.sizes import FOUR_K_RATIOS, RATIOS, RESOLUTIONS, size_for

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- sizes: from imageforge.sizes, checked by tests/test_readme.py -->"
END = "<!-- end of sizes -->"


def size_table() -> str:
    """The README's size table, from imageforge.sizes (paste this when they differ)."""
    lines = [
        "| ratio | " + " | ".join(r.upper() for r in RESOLUTIONS) + " |",
        "|---|" + "---|" * len(RESOLUTIONS),
    ]
    for ratio in RATIOS:
        cells = []
        for resolution in RESOLUTIONS:
            try:
                width, height = size_for(ratio, resolution)
            except InvalidRequest:
                cells.append("—")
            else:
                cells.append(f"{width}×{height}")
        lines.append(f"| `{ratio}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_size_table_is_the_codes() -> None:
    text = README.read_text()
    assert START in text and END in text
    printed = text.split(START, 1)[1].split(END, 1)[0].strip()
    expected = size_table()
    assert printed == expected, f"README's size table is stale; it should read:\n{expected}"


def test_the_readme_states_the_defaults_and_the_4k_ratios() -> None:
    text = " ".join(README.read_text().split())
    assert (
        f"quality `{DEFAULT_QUALITY}`, ratio `{DEFAULT_RATIO}` and resolution "
        f"`{DEFAULT_RESOLUTION}`" in text
    )
    four_k = [ratio for ratio in RATIOS if ratio in FOUR_K_RATIOS]
    assert f"({', '.join(four_k)})" in text


def test_the_example_responses_show_amount_and_refunded() -> None:
    text = README.read_text()
    walk_through = text.split("## Walk-through with curl", 1)[1].split("\n## ", 1)[0]
    shapes = re.findall(r'# (\{"id".*?)(?=\n\n|\n# \d|\n```)', walk_through, flags=re.S)
    assert len(shapes) == 2, shapes  # the create and the poll
    for shape in shapes:
        assert '"amount":' in shape and '"refunded":' in shape, shape


def test_the_quick_start_is_two_commands_and_names_the_playground() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", quick_start, flags=re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert [c for c in commands if c] == ["make serve", "make test"]
    assert "http://127.0.0.1:8000/playground" in quick_start
