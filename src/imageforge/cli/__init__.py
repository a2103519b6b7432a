"""The `imageforge` command line: serve, worker, keys, db, and the client commands
(generate, result, tasks).

`main` is the entry point. It installs the stop handler before it imports anything else
(cli/stopping.py), then runs the commands that cli/app.py assembles.
"""

from __future__ import annotations


def main() -> None:
    from imageforge.cli.stopping import STOP

    STOP.install()

    from imageforge.cli.app import run

    run()
