"""`imageforge serve --processes N` on PostgreSQL: N processes answer on one port, each with
connections of its own; SIGTERM drains them all; SQLite is refused."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from imageforge.testing.processes import ServerProcess, cli_env
from tests.cluster import REPO_ROOT, cluster_env, wait_until
from tests.test_postgres_workers import _key


def _children(server: ServerProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"started server process (\d+)", server.output())]


#: /proc/net/tcp's states.
ESTABLISHED, LISTEN = "01", "0A"


def _sockets(pid: int, port: int, state: str) -> int:
    """How many TCP sockets on local `port`, in `state`, the process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", str(target))
        if match:
            inodes.add(match.group(1))
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state and fields[9] in inodes:
            count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_processes_share_the_port_and_drain_on_sigterm(tmp_path: Path, fresh_pg_url: str) -> None:
    data = tmp_path / "data"
    env = cluster_env(fresh_pg_url, IMAGEFORGE_ENGINE="offline", IMAGEFORGE_LOG_LEVEL="info")
    key = _key(data, env)
    with ServerProcess(data, "--no-worker", "--processes", "2", **env) as server:
        wait_until(lambda: len(_children(server)) == 2, 30, "two server processes")
        children = _children(server)
        assert server.output().count("serving on") == 1, "announced once, by the supervisor"
        # Enough connections that each process is handed some (SO_REUSEPORT hashes them):
        # the chance that 24 all land on one of two processes is 2**-23.
        wait_until(
            lambda: all(_sockets(pid, server.port, LISTEN) == 1 for pid in children),
            30,
            "both processes to listen",
        )
        clients = [server.client(key) for _ in range(24)]
        try:
            created = clients[0].post(
                "/v1/image2/images", json={"model": "gpt-image-2", "prompt": "shared port"}
            )
            assert created.status_code == 200, created.text
            task_id = created.json()["id"]
            for client in clients:
                answer = client.get(f"/v1/result/{task_id}")
                assert answer.status_code == 200
                assert answer.json()["status"] == "queued"
            held = {pid: _sockets(pid, server.port, ESTABLISHED) for pid in children}
            assert all(count > 0 for count in held.values()), held
            assert sum(held.values()) == len(clients)
        finally:
            for client in clients:
                client.close()
        assert server.terminate(timeout=30) == 0
        assert not any(_alive(pid) for pid in children)


def test_several_processes_on_sqlite_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imageforge", "serve", "--processes", "2"],
        env=cli_env(tmp_path / "data"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78  # EX_CONFIG
    assert result.stderr.startswith("imageforge: IMAGEFORGE_DATABASE_URL: --processes needs")
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_one_line(tmp_path: Path, fresh_pg_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "imageforge", "serve", "--processes", "2", "--port", str(port)],
            env=cli_env(tmp_path / "data", **cluster_env(fresh_pg_url)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 78, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
