"""Atomic creation of an OCI image layout directory.

A layout is assembled in a hidden sibling of the output path, on the same
filesystem, and renamed into place only when complete, with ``index.json``
written last. The sibling holds a lock for as long as its build runs, so a
later build can tell a dead build's leftovers from a live one and remove
only the former.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from pathlib import Path

from .digest import Digest
from .errors import OutputError

log = logging.getLogger(__name__)

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
TEMP_MARKER = ".ocilayout-tmp-"
INIT_MARKER = ".ocilayout-init-"
LOCK_NAME = ".ocilayout-lock"
_RENAME_NOREPLACE = 1


class LayoutWriter:
    """Writes one layout at ``output``; use as a context manager.

    On a clean exit after ``commit`` the layout exists at ``output``. On any
    exception, KeyboardInterrupt included, the temporary directory is removed
    and ``output`` is left as it was. ``output`` must not exist yet.
    """

    def __init__(self, output: str | os.PathLike[str], sync: bool = True):
        self.output = Path(os.path.abspath(output))
        self.sync = sync
        self.temp: Path | None = None
        self._lock_fd = -1
        self._committed = False
        # blobs/<algorithm> folders already created, by algorithm.
        self._blob_folders: dict[str, str] = {}

    def __enter__(self) -> "LayoutWriter":
        check_output_path(self.output)
        remove_stale_temporaries(self.output)
        token = secrets.token_hex(6)
        # A cleaner removes a directory only when it can take the lock in it,
        # and the lock file appears already locked, so a starting build is
        # never mistaken for a dead one.
        starting = self.output.parent / f".{self.output.name}{INIT_MARKER}{token}"
        try:
            starting.mkdir(mode=0o755)
            self.temp = starting
            # The lock file gets its scanned name only once it is locked.
            unlocked = starting / f"{LOCK_NAME}.new"
            self._lock_fd = os.open(
                unlocked, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(unlocked, starting / LOCK_NAME)
            running = self.output.parent / f".{self.output.name}{TEMP_MARKER}{token}"
            os.rename(starting, running)
            self.temp = running
        except OSError as exc:
            self._discard()
            raise OutputError(
                f"cannot create a temporary directory beside {self.output}: "
                f"{exc.strerror}",
                path=str(self.output),
            ) from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self._discard()

    def blob_path(self, digest: Digest) -> str:
        """Return the path for ``digest`` in the layout, creating its folder once."""
        folder = self._blob_folders.get(digest.algorithm)
        if folder is None:
            folder = os.path.join(self.temp, "blobs", digest.algorithm)
            os.makedirs(folder, exist_ok=True)
            self._blob_folders[digest.algorithm] = folder
        return os.path.join(folder, digest.hex)

    def commit(self, index: dict, before_rename=None) -> None:
        """Write ``oci-layout`` and ``index.json`` and move the layout into place.

        ``before_rename``, if given, is called with the finished temporary
        directory and may raise to abandon the layout.
        """
        self._write_json("oci-layout", LAYOUT_VERSION)
        self._write_json("index.json", index)
        if before_rename is not None:
            before_rename(self.temp)
        if self.sync:
            self._sync_tree()
        os.unlink(self.temp / LOCK_NAME)
        try:
            _rename_noreplace(self.temp, self.output)
        except FileExistsError as exc:
            raise OutputError(
                f"output {self.output} appeared while the layout was being built; "
                "nothing was replaced",
                path=str(self.output),
            ) from exc
        self._committed = True
        os.close(self._lock_fd)
        self._lock_fd = -1
        if self.sync:
            _fsync_dir(self.output.parent)

    def _write_json(self, name: str, value: dict) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        fd = os.open(
            self.temp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _sync_tree(self) -> None:
        # Hardlinked blobs are the store's own files: fsyncing them would
        # need a write-capable open, so only files this build wrote are synced.
        for folder, _, files in os.walk(self.temp):
            for name in files:
                path = os.path.join(folder, name)
                if os.stat(path).st_nlink == 1:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            _fsync_dir(Path(folder))

    def _discard(self) -> None:
        if self.temp is not None and self.temp.exists():
            shutil.rmtree(self.temp, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def check_output_path(output: Path) -> None:
    """Reject an output path that exists or whose parent is not a directory."""
    if os.path.lexists(output):
        kind = "a directory" if output.is_dir() else "a file"
        raise OutputError(
            f"output {output} already exists ({kind}); remove it or choose a new path",
            path=str(output),
        )
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(
            f"parent directory {parent} of output {output} does not exist; "
            "create it first",
            path=str(output),
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"parent directory {parent} of output {output} is not writable",
            path=str(output),
        )


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Remove temporary directories of dead builds of ``output``.

    A directory counts as dead only when its lock file exists and its lock can
    be taken, which means the process that created it has exited.
    """
    prefixes = (f".{output.name}{TEMP_MARKER}", f".{output.name}{INIT_MARKER}")
    removed = []
    try:
        entries = list(os.scandir(output.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefixes) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        log.info("removing temporary directory of a dead build: %s", path)
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        removed.append(path)
    return removed


def _rename_noreplace(source: Path, target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target))
        os.rename(source, target)
        return
    at_fdcwd = -100
    result = renameat2(
        at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target),
        _RENAME_NOREPLACE,
    )
    if result != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL):
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", str(target))
            os.rename(source, target)
            return
        raise OSError(code, os.strerror(code), str(target))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
