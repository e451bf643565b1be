"""A real PostgreSQL server for the tests, in a temporary data directory.

The server comes from the Debian ``postgresql`` package (``make test`` installs
it). It listens on a unix socket inside its temporary directory and on a free
loopback TCP port. Connections over the socket are trusted; TCP connections
need a password, so tests can check that ``PGPASSWORD`` and ``.pgpass`` reach
the server. ``initdb`` refuses to run as root, so as root the server runs as
the ``postgres`` system user that the package creates.

One server serves the whole test process: ``shared_server()`` starts it on
first use and stops it when the process exits. Each test creates its own
database on it. Nothing here skips: a missing binary is a test failure.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN_DIR = Path(os.environ.get("OCILAYOUT_PG_BIN", "/usr/lib/postgresql/15/bin"))
ADMIN_USER = "postgres"
# A login role with a password, for the tests of password handling over TCP.
PASSWORD_USER = "ocilayout_reader"
PASSWORD = "reader-secret-4f1c"
START_TIMEOUT_SECONDS = 60

_lock = threading.Lock()
_server: PostgresServer | None = None


@dataclass
class PostgresServer:
    """A running server: where it listens and how to reach it."""

    base: Path
    socket_dir: Path
    port: int
    run_as: str | None
    password_user: str = PASSWORD_USER
    password: str = PASSWORD

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def url(self, database: str, user: str = ADMIN_USER, tcp: bool = False) -> str:
        """Return a ``postgresql://`` URL without a password for ``database``."""
        if tcp:
            return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        return (
            f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"
        )

    def admin_connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True)

    def create_database(self, prefix: str = "test") -> str:
        """Create an empty database with a unique name and return the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.admin_connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin_connect() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data_dir.exists():
            _run(
                self,
                [
                    str(BIN_DIR / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                check=False,
            )
        shutil.rmtree(self.base, ignore_errors=True)


def shared_server() -> PostgresServer:
    """Start the test process's server on first use and return it."""
    global _server
    with _lock:
        if _server is None:
            _server = _start()
            atexit.register(_server.stop)
        return _server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    return shared_server()


@pytest.fixture
def postgres_database(postgres_server) -> str:
    """A fresh, empty database on the shared server; dropped afterwards."""
    name = postgres_server.create_database()
    yield name
    postgres_server.drop_database(name)


def _start() -> PostgresServer:
    initdb = BIN_DIR / "initdb"
    if not initdb.exists():
        raise AssertionError(
            f"{initdb} is missing; run `make test`, which installs the Debian "
            "package postgresql, or set OCILAYOUT_PG_BIN to its bin directory"
        )
    run_as = ADMIN_USER if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="ocilayout-pg-"))
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(base, base, _free_port(), run_as)
    try:
        _init_cluster(server)
        _run(
            server,
            [
                str(BIN_DIR / "pg_ctl"),
                "-D",
                str(server.data_dir),
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "-l",
                str(base / "server.log"),
                "-o",
                f"-p {server.port} -k {server.socket_dir} -h 127.0.0.1",
                "start",
            ],
        )
        _create_password_user(server)
    except BaseException:
        log = base / "server.log"
        detail = log.read_text(errors="replace") if log.exists() else ""
        server.stop()
        if detail:
            raise AssertionError(f"PostgreSQL failed to start:\n{detail}")
        raise
    return server


def _init_cluster(server: PostgresServer) -> None:
    _run(
        server,
        [
            str(BIN_DIR / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            ADMIN_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ],
    )
    # Test data is thrown away, so durability only costs time; the memory
    # settings let a million-row table and its indexes stay in memory.
    settings = (
        "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        "shared_buffers = 1GB\nmaintenance_work_mem = 256MB\n"
        "max_wal_size = 4GB\nwork_mem = 64MB\n"
    )
    with open(server.data_dir / "postgresql.conf", "a") as handle:
        handle.write(settings)


def _create_password_user(server: PostgresServer) -> None:
    with server.admin_connect() as connection:
        connection.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")


def _run(server: PostgresServer, argv: list[str], check: bool = True) -> None:
    if server.run_as is not None:
        argv = ["runuser", "-u", server.run_as, "--", *argv]
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=server.base
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
