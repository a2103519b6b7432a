from __future__ import annotations

from imageforge.cli import main

# Guarded: spawned render processes import the main module again.
if __name__ == "__main__":
    main()
