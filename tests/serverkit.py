"""Real store servers for tests: a `taskvec store serve` process on 127.0.0.1, and a throwaway PostgreSQL cluster.

Both are always stopped by their fixture's teardown, even when a test fails: the server process is killed, the
cluster stopped (immediate mode, then SIGKILL of its postmaster) and its folder removed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import httpx
import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`taskvec store serve` in its own process: ``--root`` or ``--db``/``--blobs``, on a free loopback port."""

    def __init__(self, log: Path, *, root: Path | None = None, db: str | None = None, blobs: str | None = None,
                 private: bool = False, port: int | None = None):
        self.where = ["--root", str(root)] if root is not None else ["--db", db, "--blobs", blobs]
        self.private, self.log_path = private, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1")
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskvec.cli", "store", "serve", *self.where, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", *(["--private"] if self.private else [])],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}): {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not answer within {timeout} s")
            time.sleep(0.1)

    def kill(self) -> int:
        """SIGKILL: no shutdown handler runs, as in a crash or the OOM killer. Returns the exit status (-9)."""
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb/pg_ctl/postgres: Debian's /usr/lib/postgresql/N/bin (newest), else PATH."""
    for folder in sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True):
        if all(Path(folder, b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


class PostgresCluster:
    """A throwaway cluster in a temporary folder, run by an unprivileged user (PostgreSQL refuses root), on
    127.0.0.1 at a free port, with a random password; ``database()`` makes a fresh database per test."""

    def __init__(self, bindir: Path):
        self.bindir, self.port, self.password = bindir, free_port(), secrets.token_hex(16)
        self.user = None
        if os.geteuid() == 0:
            self.user = next(u for u in ("postgres", "nobody") if _has_user(u))
        # in /tmp when run as root: the unprivileged user must reach it (pytest's root-owned folders are 0700)
        self.dir = Path(tempfile.mkdtemp(prefix="taskvec-pg-", dir="/tmp" if self.user else None))
        self.data = self.dir / "data"
        self.pid: int | None = None

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({p.returncode}): {p.stdout[-2000:]} {p.stderr[-2000:]}")

    def start(self) -> "PostgresCluster":
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            info = pwd.getpwnam(self.user)
            for p in (self.dir, pwfile):
                os.chown(p, info.pw_uid, info.pw_gid)
        pwfile.chmod(0o600)
        self._run("initdb", "-D", str(self.data), "-U", "taskvec", f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "-t", "60",
                  "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://taskvec:{self.password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database: its SQLAlchemy URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=taskvec password={self.password} "
                             "dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.pid is not None and (self.data / "postmaster.pid").exists():
                try:
                    os.kill(self.pid, signal.SIGKILL)  # still there after the stop: the postmaster, by its pid
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgresql():
    """A PostgreSQL cluster for the session; the tests using it skip where PostgreSQL is not installed."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/postgres; Debian: apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def make_token(db_url: str, orgs=("acme",)) -> str:
    """A token in the store's database, as `taskvec store token create` makes one."""
    from taskvec.store.auth import create_token
    from taskvec.store.db import Database

    db = Database(db_url)
    try:
        return create_token(db, list(orgs))[1]
    finally:
        db.close()


class Stack:
    """Where a store keeps its state (SQLite under a root, or PostgreSQL plus a blob folder), a token for acme, and
    server processes started on it -- all stopped at teardown."""

    def __init__(self, tmp: Path, db_url: str | None):
        self.tmp, self.servers = tmp, []
        if db_url is None:
            self.where = {"root": tmp / "store"}
            self.where["root"].mkdir()
            self.db_url, self.blobs = f"sqlite:///{tmp / 'store' / 'store.db'}", tmp / "store" / "blobs"
        else:
            self.blobs = tmp / "blobs"
            self.where, self.db_url = {"db": db_url, "blobs": str(self.blobs)}, db_url
        self.token = make_token(self.db_url)

    def serve(self) -> ServerProcess:
        server = ServerProcess(self.tmp / f"server{len(self.servers)}.log", **self.where)
        self.servers.append(server)
        return server.start()

    def incoming(self) -> list[Path]:
        return sorted((self.blobs / "incoming").iterdir())

    def client(self, server: ServerProcess, name: str = "cache"):
        from taskvec.store.client import StoreClient

        return StoreClient(server.url, self.token, cache=self.tmp / name)

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request, tmp_path):
    db_url = None if request.param == "sqlite" else request.getfixturevalue("postgresql").database()
    s = Stack(tmp_path, db_url)
    try:
        yield s
    finally:
        for server in s.servers:
            server.stop()
