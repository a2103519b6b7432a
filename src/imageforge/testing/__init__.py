"""Fakes and harnesses for testing imageforge and programs built on it.

Shipped with the package (not only in the test suite) so that the test suite, the
benchmarks and your own tests share one copy. Import the submodule you need; none of
them is imported by the server itself.

- `imageforge.testing.engines`: `ScriptedEngine` (outcomes scripted call by call, in
  process) and `ChaosEngine` (an engine plugin for server and worker processes: random
  or zero latency, an fsynced log of every call).
- `imageforge.testing.storage`: `MemoryStorage`, the `Storage` interface in a dict.
- `imageforge.testing.processes`: `imageforge serve` and the CLI as real processes on
  loopback (`ServerProcess`, `run_cli`, `create_key`, `wait_terminal`).
- `imageforge.testing.postgres`: throw-away databases on a PostgreSQL server
  (`PostgresServer`; needs the `postgres` extra).
"""
