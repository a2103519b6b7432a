"""`imageforge serve` and `imageforge worker`: the long-running processes."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from imageforge import lifeline
from imageforge.cli.common import (
    ConfigOption,
    command_name,
    load_settings,
    with_store,
)
from imageforge.cli.stopping import STOP, run_unless_stopped
from imageforge.errors import ConfigurationError
from imageforge.keyring import create_api_key
from imageforge.observability import multiprocess
from imageforge.observability.logs import configure_logging
from imageforge.observability.metrics_server import MetricsServer
from imageforge.runtime import Runtime
from imageforge.settings import Settings
from imageforge.store import Store
from imageforge.store.urls import database_backend

#: Set by the supervisor of `--processes N` on each process it starts: its own pid.
ParentPidOption = Annotated[
    int | None,
    typer.Option("--parent-pid", hidden=True, help="Set by the supervisor: its pid."),
]

#: Held while serve checks for and creates the first key (in the data dir).
FIRST_KEY_LOCK = "first-key.lock"


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; run `imageforge worker` elsewhere.")
    ] = False,
    config: ConfigOption = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Server processes sharing the port, each on one core (PostgreSQL only).",
        ),
    ] = 1,
    parent_pid: ParentPidOption = None,
) -> None:
    """Start the API server (and, by default, a worker in the same process)."""
    import uvicorn

    from imageforge.api.app import create_app
    from imageforge.api.connections import server_limits

    if parent_pid is not None:
        # One of `serve --processes N`: it dies with the supervisor, draining as on SIGTERM.
        lifeline.exit_with_parent(parent_pid, signal.SIGTERM)
    settings = load_settings(config)
    configure_logging(settings.log_level, settings.log_format)
    _refuse_processes_on_sqlite(settings, processes)
    multiprocess.prepare(processes=processes, child=parent_pid is not None)
    # Everything the configuration gets wrong is said before anything is announced.
    Runtime.check(settings, run_worker=not no_worker)
    if STOP.requested:
        return
    if parent_pid is None and database_backend(settings.resolved_database_url) == "sqlite":
        # Not cancelled by a stop: a key created must also be shown, or it is lost.
        announce(settings, host, port, secret=first_key_secret(settings))
    elif parent_pid is None:  # a supervisor's process: the supervisor announced the server
        finished, keys = run_unless_stopped(
            lambda: with_store(settings, lambda store: store.list_keys())
        )
        if not finished:
            return
        announce(settings, host, port, secret=None, distributed_without_keys=not keys)
    if STOP.requested:
        return
    if processes > 1:
        raise typer.Exit(_supervise_servers(settings, host, port, processes, no_worker, config))
    uvicorn_config = uvicorn.Config(
        # The one place the garbage collector is tuned: this process serves and nothing else.
        create_app(
            settings,
            run_worker=not no_worker,
            tune_gc=True,
            # One of `serve --processes N`: the supervisor serves `metrics_port` for all.
            serve_metrics=parent_pid is None,
        ),
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with the header deadline and the connection cap (`api/connections.py`).
        **server_limits(settings),
        # The app writes one line per request itself (observability/request_log.py), and
        # logging is configured already (observability/logs.py).
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        # The app applies `trusted_proxies` itself; uvicorn's FORWARDED_ALLOW_IPS is not read.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = uvicorn.Server(uvicorn_config)
    # While uvicorn runs it handles SIGTERM/SIGINT itself: it finishes starting (the
    # lifespan: migrations, engines), drains, and re-raises the signal to the handler it
    # found, ours, which only takes note: exit 0. A stop that comes before uvicorn has
    # installed its handlers reaches it through this callback.
    unsubscribe = STOP.on_stop(lambda: setattr(server, "should_exit", True))
    try:
        # One of several processes on the port: each its own socket, the kernel spreads
        # the connections (SO_REUSEPORT); alone, uvicorn binds as usual.
        server.run(sockets=[shared_port_socket(host, port)] if parent_pid is not None else None)
    finally:
        unsubscribe()
    if not server.started and not STOP.requested:
        raise typer.Exit(1)


def _refuse_processes_on_sqlite(settings: Settings, processes: int) -> None:
    if processes > 1 and database_backend(settings.resolved_database_url) == "sqlite":
        raise ConfigurationError(
            "--processes needs PostgreSQL: SQLite has a single writer, and a process waiting "
            "for the write lock stalls its event loop",
            setting="database_url",
            fix="set it to a PostgreSQL database, or run one process",
        )


def _supervise_servers(
    settings: Settings,
    host: str,
    port: int,
    processes: int,
    no_worker: bool,
    config: Path | None,
) -> int:
    """`serve --processes N`: N serve processes on one port under a supervisor, which
    drains them all on SIGTERM (each as a lone `serve` would) and replaces one that dies."""
    # Said here, once, rather than by every process in a restart loop.
    shared_port_socket(host, port).close()
    arguments = ["--host", host, "--port", str(port)]
    if no_worker:
        arguments.append("--no-worker")
    return _run_supervised(settings, "serve", arguments, processes, config)


def _run_supervised(
    settings: Settings, command_name: str, arguments: list[str], processes: int, config: Path | None
) -> int:
    """Run `processes` of `imageforge <command_name> <arguments>` under a supervisor, each
    told its pid (`--parent-pid`), serving `metrics_port` (the sum of theirs) meanwhile."""
    from imageforge.supervisor import Supervisor

    command = [sys.executable, "-m", "imageforge", command_name, "--parent-pid", str(os.getpid())]
    command += arguments
    if config is not None:
        command += ["--config", str(config)]
    kind = "server" if command_name == "serve" else "worker"
    supervisor = Supervisor(command, processes, stop_requested=lambda: STOP.requested, kind=kind)
    metrics_server = _supervisor_metrics(settings)
    try:
        return supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.stop()


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other processes may bind too (SO_REUSEPORT):
    the kernel hands each new connection to one of them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            setting="port",
            fix="choose a free port, or stop what listens there",
        ) from None
    sock.set_inheritable(True)
    return sock


def first_key_secret(settings: Settings) -> str | None:
    """Embedded mode (SQLite) only: on a database without any key, create the first
    one ("default") and return its secret; otherwise None.

    The check and the creation hold a file lock in the data dir, so of several serve
    processes starting at once exactly one creates (and prints) a key. Distributed mode
    (PostgreSQL) never gets here: many API nodes may start at once, each on its own
    machine, and a secret must not land in every node's logs.
    """

    async def ensure_key(store: Store) -> str | None:
        if await store.list_keys():
            return None
        _, secret = await create_api_key(store, "default")
        return secret

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with (settings.data_dir / FIRST_KEY_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return asyncio.run(with_store(settings, ensure_key))


def announce(
    settings: Settings,
    host: str,
    port: int,
    *,
    secret: str | None,
    distributed_without_keys: bool = False,
) -> None:
    """Where the server listens; with a key created just now, how to use it."""
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown_host}:{port}"
    # Plain prints, not rich: rich wraps long lines, and commands here are meant to be
    # copied and pasted whole.
    create_key = f"{command_name()} keys create --name NAME"
    if distributed_without_keys:
        print(
            f"imageforge: serving on {base} (playground: {base}/playground). There is no API "
            "key yet, and in distributed mode (PostgreSQL) serve does not create one. Create "
            f"one, once, against this database:\n\n  {create_key}\n",
            flush=True,
        )
        return
    if secret is None:
        print(
            f"imageforge: serving on {base} (data in {settings.data_dir}; playground: "
            f"{base}/playground); create an API key with: {create_key}",
            flush=True,
        )
        return
    body = '{"model": "gpt-image-2", "prompt": "A serene mountain lake at sunset"}'
    client_variables = f"IMAGEFORGE_BASE_URL={base} IMAGEFORGE_API_KEY={secret} "
    lines = [
        "",
        "imageforge is ready. An API key was created for you (shown once, store it now):",
        "",
        f"  {secret}",
        "",
        "Create an image:",
        "",
        f"  curl -s {base}/v1/image2/images \\",
        f'    -H "Authorization: Bearer {secret}" \\',
        '    -H "Content-Type: application/json" \\',
        f"    -d '{body}'",
        "",
        "Then poll it with the id you got until its status is completed:",
        "",
        f'  curl -s {base}/v1/result/IMAGE_ID -H "Authorization: Bearer {secret}"',
        "",
        f"Or open the playground in a browser and paste the key: {base}/playground",
        "",
        "Or from another shell, saving the picture:",
        "",
        f"  {client_variables}{command_name()} generate 'a lake' -o lake.png",
        "",
        f"API reference: {base}/docs",
        "",
    ]
    print("\n".join(lines), flush=True)


def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at once (default: settings).")
    ] = None,
    config: ConfigOption = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="Worker processes to run, each on one core (PostgreSQL only).",
        ),
    ] = 1,
    parent_pid: ParentPidOption = None,
) -> None:
    """Run a worker without the API: claim and generate queued tasks until SIGTERM."""
    if parent_pid is not None:
        # Started by `worker --processes N`: a supervisor killed outright takes its
        # workers with it, each draining as on SIGTERM.
        lifeline.exit_with_parent(parent_pid, signal.SIGTERM)
    settings = load_settings(config)
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    configure_logging(settings.log_level, settings.log_format)
    _refuse_processes_on_sqlite(settings, processes)
    multiprocess.prepare(processes=processes, child=parent_pid is not None)
    Runtime.check(settings, run_worker=True)
    if STOP.requested:
        return
    if processes > 1:
        arguments = [] if concurrency is None else ["--concurrency", str(concurrency)]
        raise typer.Exit(_run_supervised(settings, "worker", arguments, processes, config))

    import uvloop

    try:
        uvloop.run(_run_worker(settings, serve_metrics=parent_pid is None))
    finally:
        multiprocess.process_exited(os.getpid())


def _supervisor_metrics(settings: Settings) -> MetricsServer | None:
    """`metrics_port` of `worker --processes N`: the sum of its processes' metrics."""
    if not settings.metrics_enabled or settings.metrics_port is None:
        return None
    token = settings.metrics_token
    server = MetricsServer(
        settings.metrics_host,
        settings.metrics_port,
        token=token.get_secret_value() if token is not None else None,
    )
    server.start()
    return server


async def _run_worker(settings: Settings, *, serve_metrics: bool) -> None:
    """Start, serve until a stop, drain. A stop during start-up cancels the start (which
    closes what it opened) and is as clean an exit as a drain."""
    log = logging.getLogger("imageforge")
    started, runtime = await STOP.unless_stopped(
        Runtime.start(
            settings, run_api=False, run_worker=True, tune_gc=True, serve_metrics=serve_metrics
        )
    )
    if not started or runtime is None:
        log.info("stopped during start-up")
        return
    log.info("worker %s started", runtime.runner and runtime.runner.worker_id)
    await STOP.wait()
    log.info("draining")
    await runtime.stop()
