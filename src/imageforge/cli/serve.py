"""`imageforge serve` and `imageforge worker`: the long-running processes."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
import sys
from typing import Annotated

import typer

from imageforge.cli.common import (
    ConfigOption,
    configure_logging,
    err_console,
    load_settings,
    with_store,
)
from imageforge.keyring import create_api_key
from imageforge.settings import Settings
from imageforge.store import Store
from imageforge.store.urls import database_backend

#: Held while serve checks for and creates the first key (in the data dir).
FIRST_KEY_LOCK = "first-key.lock"


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; run `imageforge worker` elsewhere.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Start the API server (and, by default, a worker in the same process)."""
    import uvicorn

    from imageforge.api.app import create_app
    from imageforge.api.connections import server_limits

    settings = load_settings(config)
    configure_logging(settings.log_level)
    if database_backend(settings.resolved_database_url) == "sqlite":
        announce(settings, host, port, secret=first_key_secret(settings))
    else:
        keys = asyncio.run(with_store(settings, lambda store: store.list_keys()))
        announce(settings, host, port, secret=None, distributed_without_keys=not keys)
    uvicorn_config = uvicorn.Config(
        # The one place the garbage collector is tuned: this process serves and nothing else.
        create_app(settings, run_worker=not no_worker, tune_gc=True),
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with the header deadline and the connection cap (`api/connections.py`).
        **server_limits(settings),
        access_log=settings.access_log,
        log_level=settings.log_level,
        # The app applies `trusted_proxies` itself; uvicorn's FORWARDED_ALLOW_IPS is not read.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = uvicorn.Server(uvicorn_config)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found installed. A no-op handler here turns a completed drain into exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if not server.started:
        raise typer.Exit(1)


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
    if distributed_without_keys:
        print(
            f"imageforge: serving on {base}. There is no API key yet, and in distributed "
            "mode (PostgreSQL) serve does not create one. Create one, once, against this "
            "database:\n\n  imageforge keys create --name NAME\n",
            flush=True,
        )
        return
    if secret is None:
        print(
            f"imageforge: serving on {base} (data in {settings.data_dir}); "
            "create an API key with: imageforge keys create --name NAME",
            flush=True,
        )
        return
    body = '{"model": "gpt-image-2", "prompt": "A serene mountain lake at sunset"}'
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
) -> None:
    """Run a worker without the API: claim and generate queued tasks until SIGTERM."""
    from imageforge.runtime import Runtime

    settings = load_settings(config)
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    configure_logging(settings.log_level)
    if processes > 1:
        if settings.resolved_database_url.startswith("sqlite"):
            err_console.print(
                "[red]--processes needs PostgreSQL:[/red] SQLite has a single writer, and a "
                "worker waiting for the write lock stalls its event loop. Set "
                "IMAGEFORGE_DATABASE_URL to a PostgreSQL database, or run one process."
            )
            raise typer.Exit(2)
        from imageforge.supervisor import Supervisor

        command = [sys.executable, "-m", "imageforge", "worker"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        if config is not None:
            command += ["--config", str(config)]
        raise typer.Exit(Supervisor(command, processes).run())

    async def run() -> None:
        import uvloop  # noqa: F401  (imported to fail early if missing)

        runtime = await Runtime.start(settings, run_api=False, run_worker=True, tune_gc=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("imageforge").info(
            "worker %s started", runtime.runner and runtime.runner.worker_id
        )
        await stop.wait()
        logging.getLogger("imageforge").info("draining")
        await runtime.stop()

    import uvloop

    uvloop.run(run())
