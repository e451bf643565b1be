"""Verified placement of blobs by hardlink, reflink or copy.

This module is the only place that hashes blob content. Every strategy
verifies size and digest before the layout is published. A hardlink is made
inside the unpublished temporary layout first, checked to be the inode that
was opened, and then hashed through the open file, so a link that the
filesystem rejects costs no hashing. A reflink or copy is hashed from the
layout's own private copy, so a later change to the store cannot alter it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Callable

from .digest import Digest
from .errors import DigestMismatchError, IntegrityError, SizeMismatchError, UsageError

CHUNK_BYTES = 1 << 20
STRATEGIES = ("auto", "hardlink", "reflink", "copy")

# Linux ioctl that makes a file share another file's extents (btrfs, XFS).
FICLONE = 0x40049409

# Errors that mean "this placement method is not possible here, try the next".
_FALLBACK_ERRNOS = {
    errno.EXDEV,
    errno.EPERM,
    errno.EMLINK,
    errno.EACCES,
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EINVAL,
    errno.ENOSYS,
}

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Placement:
    digest: str
    size: int
    method: str
    hashed: bool
    store_writable: bool
    # Hardlink only: the file's identity after linking, for a verification cache.
    identity: FileIdentity | None = None


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file changes: the cache key of a verification."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> "FileIdentity":
        return cls(
            info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
        )


def hash_fd(
    fd: int,
    digest: Digest,
    progress: ProgressFn | None = None,
    sink: int | None = None,
) -> tuple[str, int]:
    """Hash ``fd`` from offset 0, writing every byte to ``sink`` if given.

    Returns (hex digest, bytes read). Reading into one reused buffer keeps
    memory flat whatever the blob size, and hashlib releases the GIL on
    updates this large, so several blobs hash in parallel threads.
    """
    hasher = digest.hasher()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    offset = 0
    while True:
        count = os.preadv(fd, [buffer], offset)
        if count == 0:
            break
        chunk = view[:count]
        hasher.update(chunk)
        if sink is not None:
            _write_all(sink, chunk)
        offset += count
        total += count
        if progress is not None:
            progress(count)
    return hasher.hexdigest(), total


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def place_blob(
    source_fd: int,
    source_path: str,
    expected: Digest,
    size: int,
    target: str,
    strategy: str,
    progress: ProgressFn | None = None,
    verified: Callable[[FileIdentity], bool] | None = None,
) -> Placement:
    """Place the blob open at ``source_fd`` at path ``target``, verified.

    ``strategy`` is one of STRATEGIES; ``auto`` tries hardlink, then reflink,
    then copy, falling back on errors that mean the method is unavailable.
    ``verified`` tells whether a file identity is already known to hold
    ``expected`` (a verification cache); only a hardlink can use it, because
    it is the only method that keeps the verified inode.
    Raises SizeMismatchError or DigestMismatchError and leaves no file at
    ``target`` or beside it on failure.
    """
    if strategy not in STRATEGIES:
        raise UsageError(
            f"invalid link strategy {strategy!r}: use one of {', '.join(STRATEGIES)}"
        )
    info = os.fstat(source_fd)
    if info.st_size != size:
        raise SizeMismatchError(str(expected), size, info.st_size, source_path)
    writable = bool(info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    order = ("hardlink", "reflink", "copy") if strategy == "auto" else (strategy,)
    last_error: OSError | None = None
    for method in order:
        identity = None
        try:
            if method == "hardlink":
                hashed, identity = _hardlink(
                    source_fd, source_path, expected, target, progress, verified
                )
            else:
                _private_copy(source_fd, source_path, expected, size, target,
                              method, progress)
                hashed = True
        except OSError as exc:
            if strategy != "auto" or exc.errno not in _FALLBACK_ERRNOS:
                raise
            last_error = exc
            continue
        return Placement(
            str(expected),
            size,
            method,
            hashed,
            writable and method == "hardlink",
            identity,
        )
    raise OSError(last_error.errno, f"cannot place {expected}: {last_error}")


def _hardlink(
    fd: int,
    path: str,
    expected: Digest,
    target: str,
    progress: ProgressFn | None,
    verified: Callable[[FileIdentity], bool] | None,
) -> tuple[bool, FileIdentity]:
    # The link comes first, so that a store on another filesystem (EXDEV) or
    # one that forbids links fails before any byte is hashed. The target sits
    # in the unpublished temporary layout, and it is removed on any failure.
    before = os.fstat(fd)
    hashed = not (verified is not None and verified(FileIdentity.of(before)))
    os.link(path, target, follow_symlinks=False)
    try:
        linked = os.stat(target, follow_symlinks=False)
        if not _unchanged(before, linked):
            raise IntegrityError(
                f"blob file {path} was replaced or changed between opening and "
                "linking"
            )
        if not hashed:
            if progress is not None:
                progress(before.st_size)
            return False, FileIdentity.of(linked)

        # The open file is the linked inode, so its bytes are the layout's.
        actual, _ = hash_fd(fd, expected, progress)
        after = os.fstat(fd)
        if not _unchanged(linked, after):
            raise IntegrityError(
                f"blob file {path} changed while it was being verified"
            )
        if actual != expected.hex:
            raise DigestMismatchError(
                str(expected), f"{expected.algorithm}:{actual}", path
            )
    except BaseException:
        _unlink_quietly(target)
        raise
    return True, FileIdentity.of(after)


def _unchanged(before: os.stat_result, after: os.stat_result) -> bool:
    """Tell whether a file kept its inode, size and mtime between two stat calls.

    ctime is left out on purpose. Concurrent builds link and unlink the same
    store files, which moves ctime and may leave the link count where it was.
    A write that restores mtime moves only ctime too. If it lands in bytes not
    yet hashed, the digest fails. If it lands in bytes already hashed, it is
    the same as a change after the build, which any hardlink allows. The
    verification cache still keys on ctime.
    """
    return (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) == (
        after.st_dev,
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    )


def _private_copy(
    fd: int,
    path: str,
    expected: Digest,
    size: int,
    target: str,
    method: str,
    progress: ProgressFn | None,
) -> None:
    partial = f"{target}.partial"
    out = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        if method == "reflink":
            fcntl.ioctl(out, FICLONE, fd)
            actual, count = hash_fd(out, expected, progress)
        else:
            actual, count = hash_fd(fd, expected, progress, sink=out)
        if count != size:
            raise SizeMismatchError(str(expected), size, count, path)
        if actual != expected.hex:
            raise DigestMismatchError(
                str(expected), f"{expected.algorithm}:{actual}", path
            )
        os.close(out)
        out = -1
        os.rename(partial, target)
    except BaseException:
        if out >= 0:
            os.close(out)
        _unlink_quietly(partial)
        raise


def write_blob_bytes(data: bytes, target: str) -> None:
    """Write an already verified in-memory blob (a manifest body) read-only."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        _write_all(fd, memoryview(data))
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
