"""Read-only access to a layout's files that never follows a symbolic link.

Every path is opened component by component relative to a directory file
descriptor with ``O_NOFOLLOW``, so a symlink anywhere below the layout root
is reported instead of followed, even if it changes while the check runs.
Only regular files are opened, which keeps FIFOs and device nodes from
blocking or having side effects.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Self

OK = "ok"
MISSING = "missing"
SYMLINK = "symlink"
NOT_REGULAR = "not-regular"
UNREADABLE = "unreadable"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """The status of a relative path inside the layout, as far as it could be opened.

    ``detail`` explains a status other than OK in a few words, naming the
    component at fault (``blobs/sha256 is a symbolic link``).
    """

    status: str
    size: int = 0
    detail: str = ""


def shown(name: str) -> str:
    """Return a file name printable as UTF-8, escaping undecodable bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


class LayoutFiles:
    """Files below one layout root, opened without following symlinks.

    Use as a context manager; the root's file descriptor closes on exit.
    """

    def __init__(self, root: str | os.PathLike[str]):
        # The root itself is the caller's choice, so a symlinked root is fine.
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self.root_fd)

    def stat(self, parts: tuple[str, ...]) -> Entry:
        """Describe ``parts`` (a relative path split on ``/``) without opening it."""
        fd, entry = self._open_parent(parts)
        if fd is None:
            return entry
        try:
            return self._stat_in(fd, parts)
        finally:
            self._close_parent(fd)

    def open(self, parts: tuple[str, ...]) -> tuple[int | None, Entry]:
        """Open a regular file for reading; return ``(fd, entry)``.

        ``fd`` is None unless ``entry.status`` is OK; the caller closes it.
        """
        parent, entry = self._open_parent(parts)
        if parent is None:
            return None, entry
        try:
            entry = self._stat_in(parent, parts)
            if entry.status != OK:
                return None, entry
            return self._open_in(parent, parts)
        finally:
            self._close_parent(parent)

    def read(self, parts: tuple[str, ...], limit: int) -> tuple[bytes | None, Entry]:
        """Read at most ``limit`` bytes of a regular file.

        Returns ``(None, entry)`` when the file cannot be opened, and the
        first ``limit + 1`` bytes otherwise so the caller can tell it is too
        large.
        """
        fd, entry = self.open(parts)
        if fd is None:
            return None, entry
        chunks = []
        remaining = limit + 1
        try:
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        except OSError as exc:
            return None, Entry(UNREADABLE, entry.size, os.strerror(exc.errno))
        finally:
            os.close(fd)
        return b"".join(chunks), entry

    def list_dir(self, parts: tuple[str, ...]) -> list[str] | None:
        """Return the names in a real directory, or None if it is anything else."""
        fd = self._open_dir(parts)
        if fd is None:
            return None
        try:
            return sorted(os.listdir(fd))
        finally:
            self._close_parent(fd)

    def _open_dir(self, parts: tuple[str, ...]) -> int | None:
        fd = self.root_fd
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                child = None
            self._close_parent(fd)
            if child is None:
                return None
            fd = child
        return fd

    def _open_parent(self, parts: tuple[str, ...]) -> tuple[int | None, Entry]:
        fd = self.root_fd
        for depth, part in enumerate(parts[:-1]):
            where = "/".join(parts[: depth + 1])
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                entry = _entry_for_error(exc, where)
                if exc.errno == errno.ENOTDIR and _is_symlink(fd, part):
                    # O_NOFOLLOW with O_DIRECTORY fails with ENOTDIR on a link.
                    entry = Entry(SYMLINK, 0, f"{shown(where)} is a symbolic link")
                self._close_parent(fd)
                return None, entry
            self._close_parent(fd)
            fd = child
        return fd, Entry(OK)

    def _close_parent(self, fd: int) -> None:
        if fd != self.root_fd:
            os.close(fd)

    def _stat_in(self, parent: int, parts: tuple[str, ...]) -> Entry:
        where = "/".join(parts)
        try:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            return _entry_for_error(exc, where)
        if stat.S_ISLNK(info.st_mode):
            return Entry(SYMLINK, 0, f"{shown(where)} is a symbolic link")
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            return Entry(NOT_REGULAR, 0, f"{shown(where)} is {kind}")
        return Entry(OK, info.st_size)

    def _open_in(self, parent: int, parts: tuple[str, ...]) -> tuple[int | None, Entry]:
        where = "/".join(parts)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            return None, _entry_for_error(exc, where)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None, Entry(NOT_REGULAR, 0, f"{shown(where)} is not a regular file")
        # Reads are blocking from here on; O_NONBLOCK only guarded the open.
        os.set_blocking(fd, True)
        return fd, Entry(OK, info.st_size)


def _is_symlink(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _entry_for_error(exc: OSError, where: str) -> Entry:
    name = shown(where)
    if exc.errno == errno.ENOENT:
        return Entry(MISSING, 0, f"{name} does not exist")
    if exc.errno == errno.ELOOP:
        return Entry(SYMLINK, 0, f"{name} is a symbolic link")
    if exc.errno == errno.ENOTDIR:
        return Entry(NOT_REGULAR, 0, f"{name} is not a directory")
    return Entry(UNREADABLE, 0, f"{name} cannot be read: {os.strerror(exc.errno)}")
