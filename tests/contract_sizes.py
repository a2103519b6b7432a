"""The contract's size table, written out once for the tests from API.md.

Independent of `imageforge.sizes` on purpose, so a typo in the module's table fails.
Landscape entries only; a portrait ratio swaps the edges of its landscape pair.
"""

from __future__ import annotations

RATIOS = (
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
RESOLUTIONS = ("1k", "2k", "4k")
FOUR_K_RATIOS = frozenset({"16:9", "9:16", "2:1", "1:2", "21:9", "9:21"})
LANDSCAPE = {
    "1:1": {"1k": (1024, 1024), "2k": (2048, 2048)},
    "3:2": {"1k": (1536, 1024), "2k": (2048, 1360)},
    "4:3": {"1k": (1024, 768), "2k": (2048, 1536)},
    "5:4": {"1k": (1280, 1024), "2k": (2560, 2048)},
    "16:9": {"1k": (1536, 864), "2k": (2048, 1152), "4k": (3840, 2160)},
    "2:1": {"1k": (2048, 1024), "2k": (2688, 1344), "4k": (3840, 1920)},
    "21:9": {"1k": (2016, 864), "2k": (2688, 1152), "4k": (3840, 1648)},
}
#: Every landscape entry as (ratio, resolution, (width, height)).
TABLE_ENTRIES = [
    (ratio, resolution, size)
    for ratio, column in LANDSCAPE.items()
    for resolution, size in column.items()
]


def table_size(ratio: str, resolution: str) -> tuple[int, int] | None:
    """The table's size for a ratio and resolution; None where the table has no entry."""
    if ratio in LANDSCAPE:
        return LANDSCAPE[ratio].get(resolution)
    first, second = ratio.split(":")
    landscape = LANDSCAPE[f"{second}:{first}"].get(resolution)
    return None if landscape is None else (landscape[1], landscape[0])
