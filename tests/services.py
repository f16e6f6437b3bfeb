"""Real services for tests: a throw-away PostgreSQL cluster and an MLflow tracking server, on localhost."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: scripts/system-deps installs it (make test runs it)")
    return found


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server on a free localhost port with a database ``optuna``; yields its URL.

    As root the cluster runs as the ``postgres`` system user (initdb refuses root), in a fresh
    directory directly under the system temp dir (pytest's are private to their owner)."""
    run_as: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="hwl-postgres-"))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = directory / "data", free_port()
    initdb = subprocess.run([*run_as, postgres_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                            capture_output=True, text=True)
    if initdb.returncode:
        raise RuntimeError(f"initdb failed: {initdb.stderr[-2000:]}")
    subprocess.run([*run_as, postgres_binary("pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"), "-w",
                    "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([*run_as, postgres_binary("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"  # the URL a user types first: psycopg 3
    finally:
        subprocess.run([*run_as, postgres_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


class ServerUrl(str):
    """The server's URL, with ``stop()`` to take the server down mid-test."""

    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)


@contextlib.contextmanager
def mlflow_server(directory: Path, backend_store_uri: str | None = None) -> Iterator[ServerUrl]:
    """``mlflow server`` (default: a SQLite backend in ``directory``) with a local artifact root there;
    yields its http:// URI."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_store_uri or f"sqlite:///{directory / 'server.db'}",
               "--artifacts-destination", str(directory / "artifacts"), "--workers", "1"]
    log = open(directory / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = ServerUrl(f"http://127.0.0.1:{port}")
    url.process = process
    try:
        deadline = time.time() + 90
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(directory / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        url.stop()
        log.close()
