"""Kill chaos: SIGKILL workers (PostgreSQL) or the whole server (SQLite) under load.

Pass: every accepted task ends terminal, none is lost, no attempt runs twice, each
completed task has exactly one side effect for its completing attempt and exactly one
stored image, each task is charged once, and work abandoned by a kill is picked up
again within lease + rescue interval.

Scale by hand: IMAGEFORGE_CHAOS_TASKS / IMAGEFORGE_CHAOS_KILLS (PostgreSQL run) and
IMAGEFORGE_CHAOS_SQLITE_TASKS / IMAGEFORGE_CHAOS_SQLITE_KILLS, e.g.
`IMAGEFORGE_CHAOS_TASKS=5000 IMAGEFORGE_CHAOS_KILLS=200 pytest -m chaos --timeout 0`.

The PostgreSQL cluster keeps its images in an S3 bucket (moto's server on 127.0.0.1) and
no two of its processes share a data dir, as on separate machines.

Orphan images: a worker killed between writing its image and recording the completion
leaves an image named after its own attempt (`<task>-<attempt>.png`). No reader ever
reaches it (the task's image_key names the completing attempt's image), so these are
counted and checked to belong to killed, non-completing attempts; the janitor's removal
of them is tested on its own (tests/test_kill_between_write_and_commit.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imageforge.testing.engines import FAIL_PREFIX, EngineEvent, read_events
from imageforge.testing.processes import ServerProcess, run_cli
from imageforge.testing.s3 import MotoServer
from tests.cluster import WorkerProcess, cluster_env, wait_until
from tests.pg import pg_connect, run_sync

pytestmark = pytest.mark.chaos

LEASE_SECONDS = 3.0
RESCUE_INTERVAL_SECONDS = 0.5
#: Beyond the rescue interval: the poll or wake-up and a claim on a busy 2-core machine,
#: where a process may wait a whole lease for its turn (the lease is what a worker that
#: falls that far behind loses anyway).
PICKUP_SLACK_SECONDS = LEASE_SECONDS
MAX_ENGINE_SECONDS = 1.0
PRICE_MICROS = 6_000  # gpt-image-2, quality low: the default price book
CREDITS = "1000"
CREDITS_MICROS = 1_000_000_000
#: gpt-image-2 at the default (low) quality.
LOW_PRICE_MICROS = 6_000


@dataclass(frozen=True)
class Balance:
    initial: int
    balance: int
    ledger_sum: int


SQLITE_RATE = 10.0
_IMAGE_NAME = re.compile(r"^(image_[0-9a-f-]+)-(\d+)\.png$")


def _scale(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class StoredTask:
    id: str
    status: str
    attempt: int
    image_key: str | None
    prompt: str
    created_at: float


@dataclass(frozen=True)
class Kill:
    pid: int
    at: float
    #: When a worker able to rescue what it abandoned was next serving, if later than its
    #: lease: its replacement (SQLite), or the first started worker still alive (PostgreSQL).
    replaced_at: float | None = None


_STARTED_LINE = re.compile(r"^(\S+ \d\d:\d\d:\d\d),(\d{3}) .* worker \S+ started$", re.M)


def _started_at(worker: WorkerProcess) -> float | None:
    """When the worker logged that it serves (its log's local time), None if it never did."""
    found = _STARTED_LINE.search(worker.log_path.read_text())
    if found is None:
        return None
    seconds = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
    return seconds + int(found.group(2)) / 1000


def _first_serving(lives: list[tuple[float, float]], after: float) -> float:
    """The first moment at or after `after` when some worker was serving; `lives` holds
    each worker's (started, killed) times."""
    return min((max(start, after) for start, end in lives if end > after), default=after)


@dataclass
class ChaosReport:
    tasks: int = 0
    kills: int = 0
    #: Attempts a kill cut short (started, never completed); each was run again.
    abandoned_attempts: int = 0
    #: Side effects beyond the one per completed task (killed after the work, before
    #: recording it): at-least-once, which is why charges hang on the task, not the call.
    re_executions: int = 0
    orphan_images: int = 0
    max_pickup_delay_s: float = 0.0
    #: The longest any task waited in the queue before its first start: how far behind a
    #: loaded machine is, which a rescued task (queued again behind the others) waits too.
    max_queue_wait_s: float = 0.0
    #: The bound the pickup delays were held to (rescue interval + slack + 2 queue waits).
    pickup_limit_s: float = 0.0
    drain_after_last_kill_s: float = 0.0


class Creator(threading.Thread):
    """Creates tasks at a steady rate through the API nodes, round robin."""

    def __init__(self, urls: list[str], key: str, count: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.key = key
        self.count = count
        self.rate = rate
        self.accepted: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        clients = [httpx.Client(base_url=url, headers=headers, timeout=10) for url in self.urls]
        started = time.monotonic()
        try:
            for index in range(self.count):
                if self.stop.is_set():
                    return
                delay = started + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                client = clients[index % len(clients)]
                try:
                    # Every tenth task fails for good, so refunds run under kills too.
                    prompt = f"{FAIL_PREFIX} chaos {index}" if index % 10 == 9 else f"chaos {index}"
                    response = client.post(
                        "/v1/image2/images", json={"model": "gpt-image-2", "prompt": prompt}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    self.accepted.append(response.json()["id"])
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
        finally:
            for client in clients:
                client.close()


def stored_images(keys: Iterable[str]) -> dict[str, dict[int, str]]:
    """task id → attempt → storage key, of every image named like a task's."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for key in keys:
        match = _IMAGE_NAME.match(key.rpartition("/")[2])
        if match:
            found[match.group(1)][int(match.group(2))] = key
    return found


def image_files(images_root: Path) -> dict[str, dict[int, str]]:
    return stored_images(p.relative_to(images_root).as_posix() for p in images_root.rglob("*"))


def check_chaos_outcome(
    *,
    stored: dict[str, StoredTask],
    accepted: list[str],
    events: list[EngineEvent],
    images: dict[str, dict[int, str]],
    kills: list[Kill],
    ledger: list[tuple[str | None, str]],
    balance: Balance,
) -> ChaosReport:
    report = ChaosReport(tasks=len(stored), kills=len(kills))
    # Nothing lost, everything finished.
    missing = set(accepted) - set(stored)
    assert not missing, f"{len(missing)} accepted task(s) lost, e.g. {sorted(missing)[:3]}"
    for task in stored.values():
        expected = "failed" if task.prompt.startswith(FAIL_PREFIX) else "completed"
        assert task.status == expected, f"{task.id} ({task.prompt!r}) ended {task.status}"

    done = [event for event in events if event.event == "done"]
    starts = [event for event in events if event.event == "start"]
    # The attempt is the fencing token: one attempt never runs twice.
    per_attempt = Counter((event.task_id, event.attempt) for event in done)
    twice = [pair for pair, count in per_attempt.items() if count > 1]
    assert not twice, f"attempts that ran twice: {twice[:5]}"

    killed_pids = {kill.pid for kill in kills}
    done_by_task: dict[str, list[EngineEvent]] = defaultdict(list)
    for event in done:
        done_by_task[event.task_id].append(event)
    for task in stored.values():
        effects = done_by_task.get(task.id, [])
        if task.status == "failed":
            # The attempt that failed it ran once; earlier ones were cut short by kills.
            assert [e for e in effects if e.attempt == task.attempt], task
            assert all(e.pid in killed_pids for e in effects if e.attempt != task.attempt)
            report.re_executions += len(effects) - 1
            continue
        # Exactly one side effect belongs to the attempt that completed the task.
        completing = [event for event in effects if event.attempt == task.attempt]
        assert len(completing) == 1, f"{task.id}: completing attempt {task.attempt}: {effects}"
        report.re_executions += len(effects) - 1
        # Every other attempt that did the work was killed before it could complete.
        for event in effects:
            if event.attempt != task.attempt:
                assert event.pid in killed_pids, f"{task.id}: live stale attempt {event}"
        # Exactly one stored image is the task's; others are orphans of killed attempts.
        assert task.image_key is not None and task.image_key.endswith(
            f"/{task.id}-{task.attempt}.png"
        ), task
        files = images.get(task.id, {})
        assert files.get(task.attempt) == task.image_key, f"{task.id}: no image"
        for attempt in files:
            if attempt != task.attempt:
                report.orphan_images += 1
                by = [event for event in effects if event.attempt == attempt]
                assert by and by[0].pid in killed_pids, f"{task.id}: orphan of live attempt"

    # Money: every task charged once; refunded once if and only if it failed; the
    # ledger sums to the balance, which moved by exactly the completed tasks' prices.
    charges = Counter(task_id for task_id, kind in ledger if kind == "charge")
    assert set(charges) == set(stored) and set(charges.values()) == {1}, "charged ≠ once"
    refunds = Counter(task_id for task_id, kind in ledger if kind == "refund")
    failed = {task.id for task in stored.values() if task.status == "failed"}
    assert failed and set(refunds) == failed and set(refunds.values()) == {1}, "refund ≠ failed"
    completed = len(stored) - len(failed)
    assert balance.ledger_sum == balance.balance, balance
    assert balance.initial - balance.balance == completed * LOW_PRICE_MICROS, balance

    first_start: dict[str, float] = {}
    for event in starts:
        first_start[event.task_id] = min(event.at, first_start.get(event.task_id, event.at))
    report.max_queue_wait_s = round(
        max(
            (first_start[t.id] - t.created_at for t in stored.values() if t.id in first_start),
            default=0.0,
        ),
        2,
    )

    # Work a kill abandoned is picked up again once its lease expired, within the rescue
    # interval (counted from the replacement's start when there was no other worker to
    # rescue it), plus what tasks wait in the queue at that load: a rescued task is queued
    # again behind the others. Measured, printed, and held to a bound derived from the
    # configured intervals and the run's own queue, not a fixed figure that a loaded
    # machine misses.
    for kill in kills:
        abandoned = {
            (event.task_id, event.attempt)
            for event in starts
            if event.pid == kill.pid and event.attempt != stored[event.task_id].attempt
        }
        report.abandoned_attempts += len(abandoned)
        for task_id, attempt in abandoned:
            later = [e.at for e in starts if e.task_id == task_id and e.attempt > attempt]
            assert later, f"{task_id} attempt {attempt} abandoned and never retried"
            rescuable_at = max(kill.at + LEASE_SECONDS, kill.replaced_at or 0.0)
            delay = min(later) - rescuable_at
            report.max_pickup_delay_s = round(max(report.max_pickup_delay_s, delay), 2)
    # Twice the queue wait: the rescue itself runs in a worker whose event loop the same
    # load holds back (measured: 20.2 s pickup against a 15.3 s queue wait, 2-core machine
    # shared with other test suites), then the task waits its turn in the queue.
    report.pickup_limit_s = round(
        RESCUE_INTERVAL_SECONDS + PICKUP_SLACK_SECONDS + 2 * report.max_queue_wait_s, 2
    )
    assert report.max_pickup_delay_s <= report.pickup_limit_s, report
    return report


class NodeDirs:
    """A data dir of its own for every process: nodes that share no disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made = 0

    def next(self) -> Path:
        self.made += 1
        return self.root / f"node-{self.made}" / "data"


def _create_key(data: Path, env: dict[str, str]) -> str:
    created = run_cli(
        data, "keys", "create", "--name", "chaos", "--credits", CREDITS, "--json", **env
    )
    assert created.returncode == 0, created.stderr
    secret: str = json.loads(created.stdout.strip().splitlines()[-1])["key"]
    return secret


# PostgreSQL + S3: 2 API nodes, 3 workers, SIGKILL workers -------------------------


async def _pg_state(
    url: str,
) -> tuple[dict[str, StoredTask], list[tuple[str | None, str]], Balance]:
    connection = await pg_connect(url)
    try:
        rows = await connection.fetch(
            "SELECT id, status, attempt, image_key, prompt, created_at FROM tasks"
        )
        ledger = await connection.fetch("SELECT task_id, kind FROM ledger")
        balance = await connection.fetchval("SELECT balance_micros FROM api_keys")
        ledger_sum = await connection.fetchval("SELECT sum(amount_micros)::bigint FROM ledger")
    finally:
        await connection.close()
    tasks = {row[0]: StoredTask(*row) for row in rows}
    money = Balance(initial=CREDITS_MICROS, balance=balance, ledger_sum=ledger_sum)
    return tasks, [(row[0], row[1]) for row in ledger], money


async def _lease_holders(url: str) -> Counter[int]:
    """Processing tasks per worker pid (worker ids are host:pid:random)."""
    connection = await pg_connect(url)
    try:
        rows = await connection.fetch("SELECT worker_id FROM tasks WHERE status = 'processing'")
    finally:
        await connection.close()
    return Counter(int(row[0].split(":")[-2]) for row in rows)


def _unfinished(tasks: dict[str, StoredTask]) -> int:
    return sum(task.status in ("queued", "processing") for task in tasks.values())


def test_sigkill_workers_on_postgres_and_s3_loses_and_doubles_nothing(
    tmp_path: Path, fresh_pg_url: str, moto_s3: MotoServer
) -> None:
    """The distributed cluster as it runs on several machines: PostgreSQL and an S3
    bucket shared, no disk shared (each node has a data dir of its own)."""
    task_count = _scale("IMAGEFORGE_CHAOS_TASKS", 500)
    kill_count = _scale("IMAGEFORGE_CHAOS_KILLS", 20)
    nodes = NodeDirs(tmp_path / "nodes")
    effects = tmp_path / "side-effects.log"
    bucket = moto_s3.create_bucket()
    env = cluster_env(fresh_pg_url, effects, **moto_s3.env(bucket))
    key = _create_key(nodes.next(), env)

    workers: list[WorkerProcess] = []
    everyone: list[WorkerProcess] = []
    apis: list[ServerProcess] = []
    born: dict[int, float] = {}
    kills: list[Kill] = []
    rng = random.Random(os.environ.get("IMAGEFORGE_CHAOS_SEED"))
    try:
        apis = [ServerProcess(nodes.next(), "--no-worker", **env) for _ in range(2)]
        for _ in range(3):
            worker = WorkerProcess(nodes.next(), env, concurrency=8)
            workers.append(worker)
            born[worker.pid] = time.monotonic()
        everyone.extend(workers)
        for worker in workers:
            worker.wait_started()

        # Below the cluster's capacity, so what a kill abandons is not stuck behind a
        # backlog; kills spread over the whole creation window.
        rate = 20.0
        creator = Creator([api.base_url for api in apis], key, task_count, rate)
        creator.start()
        window = task_count / rate

        def kill_one(victim: WorkerProcess | None = None) -> None:
            if victim is None:
                now = time.monotonic()
                ready = [w for w in workers if now - born[w.pid] > 1.5] or workers
                victim = rng.choice(ready)
            victim.kill()
            kills.append(Kill(victim.pid, time.time()))
            replacement = WorkerProcess(nodes.next(), env, concurrency=8)
            workers[workers.index(victim)] = replacement
            everyone.append(replacement)
            born[replacement.pid] = time.monotonic()

        # All kills but the last spread over the creation window; the last comes once
        # every task is accepted, so "all done within lease + rescue of the last kill"
        # measures recovery, not the creation rate.
        for _ in range(kill_count - 1):
            time.sleep(window / kill_count * rng.uniform(0.5, 1.0))
            kill_one()
        creator.join(timeout=window + 60)
        assert not creator.failures, creator.failures[:5]
        assert len(creator.accepted) == task_count
        if kill_count:
            # The last victim is the busiest worker: its tasks must come back by rescue.
            time.sleep(rng.uniform(0.1, 0.3))
            holders = run_sync(lambda: _lease_holders(fresh_pg_url))
            kill_one(max(workers, key=lambda worker: holders.get(worker.pid, 0)))

        last_kill = kills[-1].at if kills else time.time()
        deadline = time.monotonic() + 120
        while True:
            tasks, ledger, money = run_sync(lambda: _pg_state(fresh_pg_url))
            if _unfinished(tasks) == 0 and len(tasks) >= task_count:
                break
            assert time.monotonic() < deadline, f"unfinished: {_unfinished(tasks)}"
            time.sleep(0.1)
        drained = time.time() - last_kill

        # Every completed task's image downloads, from the bucket, through its link;
        # clients see the same thing through either API node.
        downloaded = 0
        with apis[0].client(key) as first, apis[1].client(key) as second, httpx.Client() as web:
            for index, task_id in enumerate(creator.accepted):
                body = (first if index % 2 else second).get(f"/v1/result/{task_id}").json()
                assert body["status"] == tasks[task_id].status, body
                if body["status"] == "completed":
                    image = web.get(body["image_url"])
                    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
                    downloaded += 1
        assert downloaded == sum(task.status == "completed" for task in tasks.values())

        # On a busy machine a replacement can take longer to start than the next kill takes
        # to come, so for a while no worker may be serving: abandoned work is due once a
        # worker could rescue it.
        died = {kill.pid: kill.at for kill in kills}
        lives = [
            (started, died.get(worker.pid, float("inf")))
            for worker in everyone
            if (started := _started_at(worker)) is not None
        ]
        kills = [
            dataclasses.replace(kill, replaced_at=_first_serving(lives, kill.at + LEASE_SECONDS))
            for kill in kills
        ]
        report = check_chaos_outcome(
            stored=tasks,
            accepted=creator.accepted,
            events=read_events(effects),
            images=stored_images(moto_s3.object_keys(bucket)),
            kills=kills,
            ledger=ledger,
            balance=money,
        )
        report.drain_after_last_kill_s = round(drained, 2)
        print(f"\nchaos (PostgreSQL + S3): {report}, {downloaded} images downloaded")
        assert report.kills >= kill_count
        # After the last kill: its lease, the pickup (as bounded above), the work itself.
        assert drained <= LEASE_SECONDS + report.pickup_limit_s + MAX_ENGINE_SECONDS, report
        for worker in workers:
            assert worker.terminate() == 0, worker.output()[-2000:]
        for api in apis:
            assert api.terminate() == 0
    finally:
        for worker in workers:
            worker.close()
        for api in apis:
            if api.process.poll() is None:
                api.kill()


# SQLite: the embedded server, kill -9 the whole process ---------------------------


def _sqlite_state(
    path: Path,
) -> tuple[dict[str, StoredTask], list[tuple[str | None, str]], Balance]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT id, status, attempt, image_key, prompt, created_at FROM tasks"
        ).fetchall()
        ledger = db.execute("SELECT task_id, kind FROM ledger").fetchall()
        (balance,) = db.execute("SELECT balance_micros FROM api_keys").fetchone()
        (ledger_sum,) = db.execute("SELECT sum(amount_micros) FROM ledger").fetchone()
    tasks = {row[0]: StoredTask(*row) for row in rows}
    money = Balance(initial=CREDITS_MICROS, balance=balance, ledger_sum=ledger_sum)
    return tasks, [(row[0], row[1]) for row in ledger], money


def test_sigkill_of_the_embedded_sqlite_server_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    task_count = _scale("IMAGEFORGE_CHAOS_SQLITE_TASKS", 150)
    kill_count = _scale("IMAGEFORGE_CHAOS_SQLITE_KILLS", 6)
    data = tmp_path / "data"
    effects = tmp_path / "side-effects.log"
    env = cluster_env(
        f"sqlite+aiosqlite:///{data / 'imageforge.db'}",
        effects,
        IMAGEFORGE_WORKER_CONCURRENCY="8",
    )
    key = _create_key(data, env)

    rng = random.Random(os.environ.get("IMAGEFORGE_CHAOS_SEED"))
    accepted: list[str] = []
    kills: list[Kill] = []
    per_round = max(1, task_count // (kill_count + 1))
    server: ServerProcess | None = None
    try:
        for round_number in range(kill_count + 1):
            server = ServerProcess(data, **env)
            if kills:
                kills[-1] = dataclasses.replace(kills[-1], replaced_at=time.time())
            count = per_round if round_number < kill_count else task_count - len(accepted)
            # Below one server's capacity (8 slots × ~0.5 s), so rescued work is not
            # queued behind a backlog.
            creator = Creator([server.base_url], key, count, rate=SQLITE_RATE)
            creator.start()
            if round_number == kill_count:
                creator.join()
                break
            # Kill while tasks are being created and run: some POSTs die with it.
            time.sleep(rng.uniform(0.5, count / SQLITE_RATE + 0.5))
            kills.append(Kill(server.process.pid, time.time()))
            server.kill()
            creator.stop.set()
            creator.join()
            accepted.extend(creator.accepted)
        accepted.extend(creator.accepted)
        assert server is not None
        last_kill = kills[-1].at
        wait_until(
            lambda: _unfinished(_sqlite_state(data / "imageforge.db")[0]) == 0,
            120,
            "every task to finish",
        )
        drained = time.time() - last_kill
        tasks, ledger, money = _sqlite_state(data / "imageforge.db")
        report = check_chaos_outcome(
            stored=tasks,
            accepted=accepted,
            events=read_events(effects),
            images=image_files(data / "images"),
            kills=kills,
            ledger=ledger,
            balance=money,
        )
        report.drain_after_last_kill_s = round(drained, 2)
        print(f"\nchaos (SQLite): {report}")
        assert server.terminate() == 0
    finally:
        if server is not None and server.process.poll() is None:
            server.kill()
