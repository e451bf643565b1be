"""Verification cache: which store files already hashed to which digest.

A hardlink placement may skip hashing a store file when the cache contains an
entry for the file's identity and the expected digest. An entry is keyed on
(device, inode, digest) and stores the size, mtime and ctime in nanoseconds;
a hit needs every one of them to match. ctime is the decisive field: any
writer can set mtime back (``touch -d``, ``rsync -t``), but the kernel moves
ctime on every write, truncate, chmod, link and unlink, and unprivileged
users cannot set it.

Because linking and unlinking move ctime, the caller records the identity a
file has after it was linked into a layout, and ``remove_layout`` carries
entries across the removal of a hardlinked layout. Without that, removing a
layout would make every later build hash again.

NOTE: kernels before Linux 6.13 stamp ctime from the coarse clock tick (1 to
10 ms). There, a same-size rewrite that sets mtime back within the tick of
the recorded link leaves the identity unchanged. Linux 6.13 and later give a
file whose times were just read a fine-grained stamp on its next change.

Entries live in one SQLite database in WAL mode outside the store, by default
``$XDG_CACHE_HOME/ocilayout`` or ``~/.cache/ocilayout``. Concurrent builds
share it: readers never wait for a writer, writers wait at most
``BUSY_TIMEOUT_SECONDS``. A database that cannot be read (corrupt, locked
for too long, of an unknown format) turns the cache off for this process, so
every lookup is a miss and the blob is hashed; it never produces a hit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from .digest import Digest, parse_digest
from .errors import UsageError
from .place import FileIdentity

log = logging.getLogger(__name__)

DATABASE_NAME = "verified.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (device, inode, digest)
) WITHOUT ROWID
"""

_LOOKUP = (
    "SELECT 1 FROM verified WHERE device = ? AND inode = ? AND digest = ? "
    "AND size = ? AND mtime_ns = ? AND ctime_ns = ?"
)

_UPSERT = (
    "INSERT INTO verified (device, inode, digest, size, mtime_ns, ctime_ns, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, inode, digest) DO UPDATE SET size = excluded.size, "
    "mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, "
    "recorded_at = excluded.recorded_at"
)


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/ocilayout``, or ``~/.cache/ocilayout``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory
    specification requires.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocilayout"


class VerifyCache:
    """Entries of blob files verified earlier, shared by concurrent builds.

    Methods are safe to call from several threads. ``problem`` is None while
    the cache works, else a sentence saying why it is off. Raises UsageError
    when ``directory`` is writable by another user, because a forged entry
    would let a changed blob skip verification.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

        _prepare_directory(self.directory)
        self.path = self.directory / DATABASE_NAME
        try:
            self._db = _connect(self.path)
        except (sqlite3.Error, OSError) as exc:
            self._turn_off(f"cannot open verification cache {self.path}: {exc}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def hit(self, identity: FileIdentity, digest: Digest | str) -> bool:
        """Tell whether the file with ``identity`` already hashed to ``digest``."""
        row = _row(identity, digest)
        with self._lock:
            if self._db is None:
                return False
            try:
                found = self._db.execute(_LOOKUP, row).fetchone()
            except sqlite3.Error as exc:
                self._turn_off(f"verification cache {self.path} failed: {exc}")
                return False
        return found is not None

    def record(self, identity: FileIdentity, digest: Digest | str) -> None:
        """Remember that the file with ``identity`` hashed to ``digest``."""
        self.record_many([(identity, digest)])

    def record_many(self, entries: Iterable[tuple[FileIdentity, Digest | str]]) -> None:
        """Remember several verified files in one transaction.

        A failure to write turns the cache off and is logged, never raised,
        because a lost entry only costs a later hash.
        """
        now = time.time()
        rows = [(*_row(identity, digest), now) for identity, digest in entries]
        if not rows:
            return
        with self._lock:
            if self._db is None:
                return
            try:
                with self._db:
                    self._db.executemany(_UPSERT, rows)
            except sqlite3.Error as exc:
                self._turn_off(f"cannot write verification cache {self.path}: {exc}")

    def prune(self, max_age_seconds: float) -> int:
        """Delete entries recorded more than ``max_age_seconds`` ago; return the count.

        Entries of files that changed or were deleted are never hit again, so
        pruning only bounds the database size.
        """
        cutoff = time.time() - max_age_seconds
        with self._lock:
            if self._db is None:
                return 0
            try:
                with self._db:
                    cursor = self._db.execute(
                        "DELETE FROM verified WHERE recorded_at < ?", (cutoff,)
                    )
            except sqlite3.Error as exc:
                self._turn_off(f"cannot prune verification cache {self.path}: {exc}")
                return 0
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _turn_off(self, problem: str) -> None:
        # Called with the lock held or from __init__.
        log.warning("%s; blobs are hashed without the cache", problem)
        self.problem = problem
        if self._db is not None:
            self._db.close()
            self._db = None


def remove_layout(
    layout: str | os.PathLike[str], cache: VerifyCache | None = None
) -> None:
    """Remove a layout directory, keeping cache entries of its hardlinked blobs.

    Unlinking a hardlinked blob moves the ctime of the store's file, which
    would turn its cache entry into a miss. For each blob that had a hit
    just before its unlink, the entry is recorded again with the identity the
    file has just after it. Every folder is opened without following
    symlinks, so a symlinked ``blobs`` or algorithm folder is never entered.
    """
    root = Path(layout)
    if cache is not None:
        with _open_folder(root) as root_fd, _open_folder("blobs", root_fd) as blobs_fd:
            for algorithm in _names(blobs_fd):
                with _open_folder(algorithm, blobs_fd) as folder_fd:
                    for name in _names(folder_fd):
                        _unlink_keeping_entry(folder_fd, algorithm, name, cache)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _open_folder(path: str | os.PathLike[str], dir_fd: int | None = None):
    """Yield a descriptor of a real folder, or -1 when it is absent or a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = -1
    if dir_fd != -1:
        try:
            fd = os.open(path, flags, dir_fd=dir_fd)
        except OSError:
            fd = -1
    try:
        yield fd
    finally:
        if fd != -1:
            os.close(fd)


def _names(dir_fd: int) -> list[str]:
    if dir_fd == -1:
        return []
    try:
        return os.listdir(dir_fd)
    except OSError:
        return []


def _unlink_keeping_entry(
    dir_fd: int, algorithm: str, name: str, cache: VerifyCache
) -> None:
    try:
        digest = parse_digest(f"{algorithm}:{name}")
    except UsageError:
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return
        known = before.st_nlink > 1 and cache.hit(FileIdentity.of(before), digest)
        os.unlink(name, dir_fd=dir_fd)
        after = os.fstat(fd)
        # NOTE: a write that restores mtime (so only its owner can make it)
        # landing just before the unlink or between it and the fstat is not
        # detected. Such a writer can change a hardlinked blob after any
        # build as well, which is why build warns about writable store files.
        if known and _same_content_fields(before, after):
            cache.record(FileIdentity.of(after), digest)
    except OSError:
        return
    finally:
        os.close(fd)


def _same_content_fields(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) == (
        after.st_dev,
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    )


def _prepare_directory(directory: Path) -> None:
    """Create the cache directory with mode 0700, or check an existing one."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(directory)
    except OSError as exc:
        raise UsageError(
            f"cannot create verification cache directory {directory}: "
            f"{exc.strerror}; pass --cache-dir PATH or --no-cache"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(
            f"verification cache path {directory} is not a directory; "
            "pass --cache-dir PATH or --no-cache"
        )
    _check_private(directory, info, "directory")
    database = directory / DATABASE_NAME
    try:
        info = os.stat(database, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(
            f"verification cache database {database} is not a regular file; "
            "remove it, or pass --cache-dir PATH or --no-cache"
        )
    _check_private(database, info, "database")


def _check_private(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(
            f"verification cache {what} {path} is writable by another user, who "
            f"could forge entries that skip verification; run chmod go-w {path} "
            "as its owner, or pass --cache-dir PATH or --no-cache"
        )


def _connect(path: Path) -> sqlite3.Connection:
    # Creating the file first with mode 0600 gives the database, and the
    # -wal and -shm files SQLite derives from it, private permissions.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(path, flags, 0o600))
    db = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        _set_up(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _set_up(db: sqlite3.Connection, path: Path) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"format version {version}, expected {SCHEMA_VERSION}; remove {path}"
        )
    # Connections opened with isolation_level=None autocommit; "with db"
    # around executemany still makes one transaction of a batch.
    db.isolation_level = "DEFERRED"


def _row(identity: FileIdentity, digest: Digest | str) -> tuple:
    return (
        _signed64(identity.device),
        _signed64(identity.inode),
        str(digest),
        identity.size,
        identity.mtime_ns,
        identity.ctime_ns,
    )


def _signed64(value: int) -> int:
    # SQLite integers are signed 64-bit; device and inode numbers are unsigned.
    return value - (1 << 64) if value >= 1 << 63 else value
