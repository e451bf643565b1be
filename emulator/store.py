"""The emulated store: a SQLite metadata database plus a filesystem blob store.

A store directory contains ``metadata.sqlite3`` with the artifact manager's
tables and ``storage/<repository key>/``, the ``storage_path`` of each
repository. Objects are addressed by storage key the way the real filesystem
backend does it: a key containing ``/`` is a relative path under
``storage_path``, a key without one goes into a folder named by its first two
characters, and only normal path components are kept.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ocilayout.errors import NotFoundError, UsageError

from .schema import DATABASE_NAME, SCHEMA, STORAGE_DIRECTORY

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Repository:
    """One row of the ``repositories`` table."""

    id: str
    key: str
    format: str
    storage_backend: str
    storage_path: Path


def utc_now() -> str:
    """Return the current time as the ISO 8601 UTC text the schema stores."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id() -> str:
    return str(uuid.uuid4())


def storage_relative_path(key: str) -> PurePosixPath:
    """Map a storage key to its path relative to a repository's storage_path.

    This mirrors the filesystem backend of the real store, including its
    guard: empty, ``.`` and ``..`` components and a leading ``/`` are
    dropped, so ``../x`` lands at ``x``. The emulator keeps that behaviour on
    purpose, because readers of a real store must reject such keys themselves.
    """
    if not key:
        raise UsageError("invalid storage key '': expected a non-empty key")
    if "/" in key:
        parts = [part for part in key.split("/") if part not in ("", ".", "..")]
    else:
        parts = [key[:2], key] if key not in (".", "..") else []
    if not parts:
        raise UsageError(
            f"invalid storage key {key!r}: it has no normal path component"
        )
    return PurePosixPath(*parts)


class EmulatorStore:
    """A store directory with its metadata database and blob storage.

    Opening an existing store never creates anything; use ``init`` for that.
    Connections returned by ``connect`` are plain ``sqlite3`` connections, so
    tests may change rows directly.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        if not self.database_path.is_file():
            raise NotFoundError(
                f"no emulator store at {self.root}: {DATABASE_NAME} is missing; "
                f"create one with 'python -m emulator init {self.root}'"
            )

    @classmethod
    def init(cls, root: str | os.PathLike[str]) -> "EmulatorStore":
        """Create an empty store at ``root``, or open the one already there."""
        root_path = Path(root)
        (root_path / STORAGE_DIRECTORY).mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(root_path / DATABASE_NAME)
        try:
            connection.executescript(SCHEMA)
            connection.commit()
        finally:
            connection.close()
        return cls(root_path)

    @property
    def database_path(self) -> Path:
        return self.root / DATABASE_NAME

    @property
    def storage_root(self) -> Path:
        return self.root / STORAGE_DIRECTORY

    def connect(self) -> sqlite3.Connection:
        """Open a connection with rows addressable by column name."""
        connection = sqlite3.connect(self.database_path)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Yield a connection whose statements commit together or not at all."""
        connection = self.connect()
        try:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
        finally:
            connection.close()

    # Repositories

    def ensure_repository(self, key: str) -> Repository:
        """Return the repository ``key``, creating its row and folder if absent."""
        _check_repository_key(key)
        existing = self.find_repository(key)
        if existing is not None:
            return existing

        storage_path = self.storage_root / key
        storage_path.mkdir(parents=True, exist_ok=True)
        with self.transaction() as connection:
            connection.execute(
                "INSERT INTO repositories"
                " (id, key, format, storage_backend, storage_path, created_at)"
                " VALUES (?, ?, 'docker', 'filesystem', ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (new_id(), key, str(storage_path), utc_now()),
            )
        return self.repository(key)

    def find_repository(self, key: str) -> Repository | None:
        connection = self.connect()
        try:
            row = connection.execute(
                "SELECT id, key, format, storage_backend, storage_path"
                " FROM repositories WHERE key = ?",
                (key,),
            ).fetchone()
        finally:
            connection.close()
        if row is None:
            return None
        return Repository(
            id=row["id"],
            key=row["key"],
            format=row["format"],
            storage_backend=row["storage_backend"],
            storage_path=Path(row["storage_path"]),
        )

    def repository(self, key: str) -> Repository:
        """Return the repository ``key`` or raise NotFoundError."""
        found = self.find_repository(key)
        if found is None:
            raise NotFoundError(f"repository {key!r} not found in {self.root}")
        return found

    # Objects

    def object_path(self, repository: Repository, key: str) -> Path:
        """Return where the object with storage key ``key`` lives on disk."""
        return repository.storage_path / storage_relative_path(key)

    def write_object(
        self, repository: Repository, key: str, source: BinaryIO | bytes
    ) -> Path:
        """Write an object atomically: into a temporary file, then rename.

        ``source`` is bytes or a readable stream. When reading the stream
        raises (for example on a digest mismatch), neither the temporary file
        nor the destination remains.
        """
        destination = self.object_path(repository, key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=destination.parent, prefix=".tmp-", suffix=".partial"
        )
        try:
            with os.fdopen(handle, "wb") as output:
                _copy_into(source, output)
            os.chmod(temporary, 0o644)
            os.replace(temporary, destination)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return destination


def _copy_into(source: BinaryIO | bytes, output: BinaryIO) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        output.write(source)
        return
    while chunk := source.read(_COPY_CHUNK):
        output.write(chunk)


def _check_repository_key(key: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
    if not key or not set(key) <= allowed or key.startswith("."):
        raise UsageError(
            f"invalid repository key {key!r}: use lowercase letters, digits, "
            f"'-', '_' and '.', not starting with '.'"
        )


def init(root: str | os.PathLike[str]) -> EmulatorStore:
    """Create an empty store at ``root`` (idempotent) and return it."""
    return EmulatorStore.init(root)
