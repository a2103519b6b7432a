"""Queue benchmark on PostgreSQL: `python bench/queue.py [--help]` prints one JSON report.

The measurements live in bench/queue_bench.py. This file is only the entry point, and it
must stay tiny because its name is also the standard library's `queue`: every script in
bench/ runs with bench/ first on sys.path, and uvloop, concurrent.futures and
logging.handlers `import queue`. Imported under that name, this file replaces itself
with the real module, so `python bench/api.py` and `bench/loadgen.py` keep working.
"""

from __future__ import annotations

import sys

if __name__ == "queue":
    import importlib.util
    import sysconfig
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location(
        "queue", Path(sysconfig.get_paths()["stdlib"]) / "queue.py"
    )
    assert _spec is not None and _spec.loader is not None
    _stdlib_queue = importlib.util.module_from_spec(_spec)
    sys.modules["queue"] = _stdlib_queue
    _spec.loader.exec_module(_stdlib_queue)
elif __name__ == "__main__":
    from queue_bench import main

    sys.exit(main())
