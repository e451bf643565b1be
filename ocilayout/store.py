"""Read access to an artifact manager's store: metadata rows and blob files.

The builder works through two small interfaces. A ``MetadataSource`` answers
questions about rows (repositories, tags, manifests, blob references, index
children, referrers) and never writes. ``open_blob`` turns a repository's
storage path and a storage key into an open file descriptor, rejecting any key
that could reach outside the repository's storage root.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from .errors import IntegrityError, MetadataMissingError, UnsafePathError, UsageError
from .names import is_image_name

DATABASE_NAME = "metadata.sqlite3"


@dataclass(frozen=True)
class Repository:
    id: str
    key: str
    storage_backend: str
    storage_path: str


@dataclass(frozen=True)
class Tag:
    image: str
    tag: str
    manifest_digest: str
    content_type: str


@dataclass(frozen=True)
class StoredManifest:
    """The ``artifacts`` row that records where a manifest body is stored."""

    digest: str
    size: int
    checksum_sha256: str
    content_type: str
    storage_key: str


@dataclass(frozen=True)
class BlobRef:
    """One ``manifest_blob_refs`` row joined to its live ``oci_blobs`` row.

    ``size`` and ``storage_key`` are None when no live blob row exists, which
    includes rows marked ``pending_delete_at``.
    """

    digest: str
    kind: str
    size: int | None
    storage_key: str | None
    ref_id: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    storage_key: str


@dataclass(frozen=True)
class Subject:
    """One ``oci_manifest_subjects`` row: a manifest that refers to a subject."""

    manifest_digest: str
    media_type: str
    artifact_type: str | None
    size: int
    annotations: str | None


def image_of_artifact_path(path: object) -> str | None:
    """Return ``<image>`` of an artifact path ``v2/<image>/manifests/<ref>``.

    Only a name that fits the reference grammar is returned, because the
    registry fallback puts it into a scanner target and a token scope.
    """
    if not isinstance(path, str) or not path.startswith("v2/"):
        return None
    image, separator, reference = path[3:].rpartition("/manifests/")
    if not separator or not reference or "/" in reference:
        return None
    return image if is_image_name(image) else None


class MetadataSource(Protocol):
    """Read-only queries over the store's tables.

    Every method is side-effect free. Lookups return None or an empty list
    when nothing matches; deleted artifacts and blobs marked for garbage
    collection are treated as absent.
    """

    def repository(self, key: str) -> Repository | None: ...

    def repositories_with_manifest(self, digest: str) -> list[Repository]: ...

    def repositories_with_tag(self, image: str, tag: str) -> list[Repository]: ...

    def tag(self, repo: Repository, image: str, tag: str) -> Tag | None: ...

    def image_names(self, repo: Repository, digest: str) -> list[str]:
        """Return, sorted, the image names a manifest was pushed under."""
        ...

    def manifest(self, repo: Repository, digest: str) -> StoredManifest | None: ...

    def blob_refs(self, repo: Repository, manifest_digest: str) -> list[BlobRef]: ...

    def blob(self, repo: Repository, digest: str) -> Blob | None: ...

    def blob_digests_at(self, repo: Repository, storage_key: str) -> list[str]:
        """Return the digest column of every oci_blobs row with this storage key."""
        ...

    def children(self, repo: Repository, parent_digest: str) -> list[str]: ...

    def referrers(self, repo: Repository, subject_digest: str) -> list[Subject]: ...

    def open_blob(self, repo: Repository, key: str) -> tuple[int, str]:
        """Open a stored object read-only and return (fd, path for messages).

        Raises FileNotFoundError when the object is absent and
        UnsafePathError when the key or file breaks the storage rules.
        """
        ...

    def close(self) -> None: ...


class SQLMetadata:
    """The MetadataSource queries, written once for SQLite and PostgreSQL.

    Statements use ``?`` placeholders. A subclass runs them in ``_rows`` and
    sets the two spellings that differ between the databases.
    """

    # ``is_deleted`` is an integer in SQLite and a boolean in PostgreSQL. The
    # format field is the table alias with its dot, or empty.
    _NOT_DELETED = "{}is_deleted = 0"
    # PostgreSQL returns uuid and jsonb columns as text only when cast.
    _AS_TEXT = ""

    def _rows(self, sql: str, *params: object) -> list[tuple]:
        raise NotImplementedError

    def _repositories(self, where: str, *params: object) -> list[Repository]:
        rows = self._rows(
            f"SELECT DISTINCT r.id{self._AS_TEXT}, r.key, r.storage_backend, r.storage_path "
            f"FROM repositories r {where} ORDER BY r.key",
            *params,
        )
        return [Repository(*row) for row in rows]

    def repository(self, key: str) -> Repository | None:
        found = self._repositories("WHERE r.key = ?", key)
        if len(found) > 1:
            raise IntegrityError(
                f"{len(found)} repositories rows have key {key!r}; the key must "
                "be unique"
            )
        return found[0] if found else None

    def repositories_with_manifest(self, digest: str) -> list[Repository]:
        return self._repositories(
            "JOIN artifacts a ON a.repository_id = r.id "
            f"WHERE a.storage_key = ? AND {self._NOT_DELETED.format('a.')}",
            f"oci-manifests/{digest}",
        )

    def repositories_with_tag(self, image: str, tag: str) -> list[Repository]:
        return self._repositories(
            "JOIN oci_tags t ON t.repository_id = r.id WHERE t.name = ? AND t.tag = ?",
            image,
            tag,
        )

    def tag(self, repo: Repository, image: str, tag: str) -> Tag | None:
        rows = self._rows(
            "SELECT name, tag, manifest_digest, manifest_content_type FROM oci_tags "
            "WHERE repository_id = ? AND name = ? AND tag = ? LIMIT 10",
            repo.id,
            image,
            tag,
        )
        if len(rows) > 1:
            digests = ", ".join(sorted({str(row[2]) for row in rows}))
            raise IntegrityError(
                f"several oci_tags rows for {image}:{tag} in repository "
                f"{repo.key} ({digests}); (repository_id, name, tag) must be unique"
            )
        return Tag(*rows[0]) if rows else None

    def image_names(self, repo: Repository, digest: str) -> list[str]:
        rows = self._rows(
            "SELECT DISTINCT path FROM artifacts WHERE repository_id = ? "
            f"AND storage_key = ? AND {self._NOT_DELETED.format('')}",
            repo.id,
            f"oci-manifests/{digest}",
        )
        return sorted({n for (path,) in rows if (n := image_of_artifact_path(path))})

    def manifest(self, repo: Repository, digest: str) -> StoredManifest | None:
        rows = self._rows(
            "SELECT size_bytes, checksum_sha256, content_type, storage_key "
            "FROM artifacts WHERE repository_id = ? AND storage_key = ? "
            f"AND {self._NOT_DELETED.format('')} LIMIT 1",
            repo.id,
            f"oci-manifests/{digest}",
        )
        return StoredManifest(digest, *rows[0]) if rows else None

    def blob_refs(self, repo: Repository, manifest_digest: str) -> list[BlobRef]:
        rows = self._rows(
            "SELECT m.blob_digest, m.kind, b.size_bytes, b.storage_key, "
            f"m.id{self._AS_TEXT}, b.id{self._AS_TEXT} "
            "FROM manifest_blob_refs m LEFT JOIN oci_blobs b "
            "ON b.repository_id = m.repository_id AND b.digest = m.blob_digest "
            "AND b.pending_delete_at IS NULL "
            "WHERE m.repository_id = ? AND m.manifest_digest = ? "
            "ORDER BY m.kind, m.blob_digest",
            repo.id,
            manifest_digest,
        )
        return [BlobRef(*row) for row in rows]

    def blob_digests_at(self, repo: Repository, storage_key: str) -> list[str]:
        rows = self._rows(
            "SELECT digest FROM oci_blobs WHERE repository_id = ? AND storage_key = ?",
            repo.id,
            storage_key,
        )
        return [row[0] for row in rows]

    def blob(self, repo: Repository, digest: str) -> Blob | None:
        rows = self._rows(
            "SELECT digest, size_bytes, storage_key FROM oci_blobs "
            "WHERE repository_id = ? AND digest = ? AND pending_delete_at IS NULL",
            repo.id,
            digest,
        )
        return Blob(*rows[0]) if rows else None

    def children(self, repo: Repository, parent_digest: str) -> list[str]:
        rows = self._rows(
            "SELECT child_digest FROM oci_manifest_refs "
            "WHERE repository_id = ? AND parent_digest = ? ORDER BY child_digest",
            repo.id,
            parent_digest,
        )
        return [row[0] for row in rows]

    def referrers(self, repo: Repository, subject_digest: str) -> list[Subject]:
        rows = self._rows(
            "SELECT manifest_digest, media_type, artifact_type, size_bytes, "
            f"annotations{self._AS_TEXT} FROM oci_manifest_subjects "
            "WHERE repository_id = ? AND subject_digest = ? ORDER BY manifest_digest",
            repo.id,
            subject_digest,
        )
        return [Subject(*row) for row in rows]

    def open_blob(self, repo: Repository, key: str) -> tuple[int, str]:
        return open_blob(repo, key)


class SQLiteMetadata(SQLMetadata):
    """MetadataSource over the emulator's SQLite database, opened read-only."""

    def __init__(self, database: str | os.PathLike[str]):
        path = Path(database)
        if path.is_dir():
            raise UsageError(
                f"metadata database {path} is a directory; give its "
                f"{DATABASE_NAME} file, or pass the directory as --store"
            )
        if not path.is_file():
            raise MetadataMissingError(
                f"metadata database not found: {path}", reason="no-database"
            )
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.execute("SELECT 1 FROM oci_blobs LIMIT 1")
        except sqlite3.Error as exc:
            raise MetadataMissingError(
                f"cannot read metadata database {path}: {exc}",
                reason="database-unavailable",
            ) from exc

    @classmethod
    def for_store(cls, store_dir: str | os.PathLike[str]) -> SQLiteMetadata:
        """Open the database of an emulator store directory.

        A directory that does not exist is a usage error (exit 2), because it
        is far more likely a mistyped path than a store that lost its rows.
        """
        if not os.path.isdir(store_dir):
            raise UsageError(
                f"store directory {store_dir} does not exist or is not a "
                "directory; check --store"
            )
        return cls(Path(store_dir) / DATABASE_NAME)

    def _rows(self, sql: str, *params: object) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()


    def close(self) -> None:
        self._db.close()


def storage_key_parts(key: object) -> list[str]:
    """Split a storage key into path components, rejecting any unsafe key.

    The store maps a key containing ``/`` to that relative path, and a key
    without one to ``<first two characters>/<key>``. A key with an empty,
    ``.`` or ``..`` component, a leading ``/``, a backslash or a NUL byte is
    rejected rather than repaired, because the store itself never writes one.
    """
    if not isinstance(key, str) or not key:
        raise UnsafePathError(f"invalid storage key {key!r}: empty", path=str(key))
    if "\0" in key or "\\" in key or key.startswith("/"):
        raise UnsafePathError(
            f"unsafe storage key {key!r}: absolute or contains NUL or backslash",
            path=key,
        )
    parts = key.split("/") if "/" in key else [key[:2], key]
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(
            f"unsafe storage key {key!r}: empty, '.' or '..' path component",
            path=key,
        )
    return parts


def open_blob(repo: Repository, key: str) -> tuple[int, str]:
    """Open the file stored under ``key`` read-only and return (fd, path).

    Every directory on the way is opened relative to the previous one with
    O_NOFOLLOW, so no symlink inside the storage root is ever followed, and the
    final file must be a regular file. Raises UnsafePathError for a key or file
    that breaks these rules and FileNotFoundError when the file is absent.
    """
    if repo.storage_backend != "filesystem":
        raise MetadataMissingError(
            f"repository {repo.key} uses storage backend {repo.storage_backend!r}; "
            "only 'filesystem' can be read locally",
            reason="unsupported-storage-backend",
        )
    parts = storage_key_parts(key)
    root = repo.storage_path
    if not isinstance(root, str) or not root:
        raise MetadataMissingError(
            f"repository {repo.key} has no storage_path, so its blobs cannot "
            "be found locally",
            reason="storage-path-missing",
        )
    if not os.path.isabs(root):
        raise UnsafePathError(
            f"storage_path {root!r} of repository {repo.key} is not absolute",
            path=root,
        )
    path = os.path.join(root, *parts)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(root, flags | os.O_DIRECTORY)
    except FileNotFoundError as exc:
        raise MetadataMissingError(
            f"storage_path {root} of repository {repo.key} does not exist",
            reason="storage-path-missing",
        ) from exc
    except OSError as exc:
        raise UnsafePathError(
            f"storage_path {root} of repository {repo.key} is not a directory "
            f"or is a symlink: {os.strerror(exc.errno or 0)}",
            path=root,
        ) from exc
    try:
        for part in parts[:-1]:
            next_fd = _open_component(part, dir_fd, flags | os.O_DIRECTORY, path)
            os.close(dir_fd)
            dir_fd = next_fd
        fd = _open_component(parts[-1], dir_fd, flags | os.O_NONBLOCK, path)
    finally:
        os.close(dir_fd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(f"blob file {path} is not a regular file", path=path)
    return fd, path


def _open_component(name: str, dir_fd: int, flags: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # ELOOP means a symlink, ENOTDIR a file where a folder belongs.
        raise UnsafePathError(
            f"cannot open {path} safely: {os.strerror(exc.errno or 0)} "
            f"at component {name!r} (symlinks are not followed)",
            path=path,
        ) from exc
