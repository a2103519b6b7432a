from __future__ import annotations

from imageforge.cli import main

main()
