"""The `imageforge` command line: serve, worker, keys, db, and the client commands
(generate, result, tasks).

`main` is the entry point. It installs the stop handler before it imports anything else
(cli/stopping.py), then runs the commands that cli/app.py assembles, or, for a client command,
that command alone (it needs nothing of the server).
"""

from __future__ import annotations


def main() -> None:
    import sys

    from imageforge.cli.stopping import STOP

    STOP.install()

    from imageforge.cli import client_commands

    if sys.argv[1:2] and sys.argv[1] in client_commands.COMMANDS:
        client_commands.run_alone()
        return

    from imageforge.cli.app import run

    run()
