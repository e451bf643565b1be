"""MetadataSource over a local OCI image layout directory.

A layout has no database, so the rows a registry would record are derived
from the layout itself:

- one repository, keyed by the directory name unless a key is given, whose
  ``storage_path`` is the layout directory and whose storage keys are the
  blob paths ``blobs/<algorithm>/<encoded>``;
- a tag for every ``index.json`` entry with an
  ``org.opencontainers.image.ref.name`` annotation: the ref name ``R``
  matches image ``I`` and tag ``T`` when ``R`` is ``T`` or ``I:T``, so both
  the short names skopeo writes (``latest``) and full names
  (``library/alpine:3.19``) work;
- a stored manifest for every manifest or index reachable from
  ``index.json`` through nested indexes whose blob file exists;
- blob references, index children and referrers parsed from those bodies.

Every file is opened with the rules of ``ocilayout.store.open_blob``: no
symlink is followed and only regular files are read. ``derive_rows`` and
``read_verified`` are shared with the registry storage tree source.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import mediatypes as mt
from .digest import Digest, parse_digest
from .errors import (
    AmbiguousError,
    DigestMismatchError,
    InvalidContentError,
    SizeMismatchError,
    UnsafePathError,
    UsageError,
)
from .manifest import (
    MAX_BODY_BYTES,
    load_json,
    parse_index,
    parse_manifest,
    sniff_media_type,
)
from .store import Blob, BlobRef, Repository, StoredManifest, Subject, Tag, open_blob

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
# Indexes nested deeper than this are rejected, as the resolver does.
MAX_INDEX_DEPTH = 8
MANIFEST_OR_INDEX = mt.MANIFEST_TYPES | mt.INDEX_TYPES


@dataclass(frozen=True)
class DerivedRows:
    """The rows a registry records for one manifest body, parsed from it.

    ``blobs`` lists (kind, digest) pairs and is empty unless the body is an
    image manifest. ``children`` lists (digest, media type) pairs of the
    child descriptors and is empty unless the body is an index.
    ``annotations`` is JSON text with sorted keys, or None.
    """

    digest: str
    media_type: str
    size: int
    sha256: str
    blobs: tuple[tuple[str, str], ...]
    children: tuple[tuple[str, str], ...]
    subject: str | None
    artifact_type: str | None
    annotations: str | None

    def as_subject(self) -> Subject:
        return Subject(
            self.digest,
            self.media_type,
            self.artifact_type,
            self.size,
            self.annotations,
        )


def derive_rows(data: bytes, digest: Digest, where: str) -> DerivedRows:
    """Parse a verified manifest or index body into the rows it implies.

    A Docker schema 1 manifest or a body of another type implies no rows.
    Raises InvalidContentError for a malformed body.
    """
    document = load_json(data, where)
    media_type = sniff_media_type(document, where)
    blobs: list[tuple[str, str]] = []
    children: list[tuple[str, str]] = []
    subject = None
    artifact_type = document.get("artifactType")
    if media_type in mt.INDEX_TYPES:
        index = parse_index(document, media_type, where)
        children = [(str(c.digest), c.media_type) for c in index.manifests]
    elif media_type in mt.MANIFEST_TYPES or "config" in document:
        manifest = parse_manifest(document, media_type, where)
        blobs.append(("config", str(manifest.config.digest)))
        blobs += [("layer", str(layer.digest)) for layer in manifest.layers]
        artifact_type = artifact_type or manifest.config.media_type
        if manifest.subject is not None:
            subject = str(manifest.subject.digest)
    annotations = document.get("annotations")
    return DerivedRows(
        digest=str(digest),
        media_type=media_type,
        size=len(data),
        sha256=Digest.of_bytes(data, "sha256").hex,
        blobs=tuple(sorted(set(blobs))),
        children=tuple(sorted(set(children))),
        subject=subject,
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
        annotations=json.dumps(annotations, sort_keys=True) if annotations else None,
    )


def read_verified(repo: Repository, key: str, digest: Digest) -> bytes | None:
    """Read a JSON-sized stored object and check it against ``digest``.

    Returns None when the file is absent. Raises DigestMismatchError when
    the content differs, InvalidContentError when it exceeds the body size
    limit and UnsafePathError when the key or file breaks the storage rules.
    """
    try:
        fd, path = open_blob(repo, key)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise InvalidContentError(
            f"{path} is larger than the {MAX_BODY_BYTES} byte limit for "
            f"manifest bodies, so {digest} is not read"
        )
    actual = Digest.of_bytes(data, digest.algorithm)
    if actual != digest:
        raise DigestMismatchError(str(digest), str(actual), path)
    return data


def stored_size(repo: Repository, key: str) -> int | None:
    """Return the size of the regular file at ``key``, or None when absent."""
    try:
        fd, _ = open_blob(repo, key)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def open_under(
    root: str, parts: Sequence[str], *, directory: bool = False
) -> tuple[int, str]:
    """Open ``root/parts...`` read-only without following any symlink.

    Returns (fd, path). The final component must be a regular file, or a
    directory when ``directory`` is true. Raises FileNotFoundError when a
    component is absent and UnsafePathError when one is a symlink, a file
    where a directory belongs, or not of the expected type.
    """
    if any(part in ("", ".", "..") or "/" in part or "\0" in part for part in parts):
        raise UnsafePathError(f"unsafe path components {list(parts)!r}", path=root)
    path = os.path.join(root, *parts)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            extra = os.O_NONBLOCK if last and not directory else os.O_DIRECTORY
            next_fd = _open_component(part, fd, flags | extra, path)
            os.close(fd)
            fd = next_fd
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    expected = stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)
    if not expected:
        os.close(fd)
        kind = "directory" if directory else "regular file"
        raise UnsafePathError(f"{path} is not a {kind}", path=path)
    return fd, path


def _open_component(name: str, dir_fd: int, flags: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # ELOOP means a symlink, ENOTDIR a file where a directory belongs.
        raise UnsafePathError(
            f"cannot open {path} safely: {os.strerror(exc.errno or 0)} at "
            f"component {name!r} (symlinks are not followed)",
            path=path,
        ) from exc


def as_digest(value: str) -> Digest | None:
    """Parse ``value`` as a digest, or return None when it is not one."""
    try:
        return parse_digest(value)
    except UsageError:
        return None


class OCILayoutMetadata:
    """MetadataSource over an OCI image layout directory.

    The layout's ``oci-layout`` and ``index.json`` are read when the source
    is opened; UsageError is raised when ``path`` is not a layout, and
    InvalidContentError when a reachable index is malformed or nested
    deeper than MAX_INDEX_DEPTH. A nested index whose blob is absent is
    skipped, so its children are not reachable.
    """

    def __init__(self, path: str | os.PathLike[str], key: str | None = None):
        root = Path(os.path.realpath(path))
        if not root.is_dir():
            raise UsageError(f"OCI layout directory not found: {path}")
        self.repo = Repository(str(root), key or root.name, "filesystem", str(root))
        self._rows: dict[str, DerivedRows | None] = {}
        self._reachable: set[str] = set()
        self._refs: list[tuple[str, str]] = []
        self._check_header()
        self._walk_index()

    def _check_header(self) -> None:
        where = f"oci-layout file of {self.repo.storage_path}"
        try:
            fd, _ = open_under(self.repo.storage_path, ["oci-layout"])
        except FileNotFoundError:
            raise UsageError(
                f"{self.repo.storage_path} is not an OCI image layout: it has no "
                "oci-layout file"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            header = load_json(handle.read(MAX_BODY_BYTES + 1), where)
        if header.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise InvalidContentError(
                f"{where} has imageLayoutVersion "
                f"{header.get('imageLayoutVersion')!r}, expected {LAYOUT_VERSION!r}"
            )

    def _walk_index(self) -> None:
        where = f"index.json of {self.repo.storage_path}"
        try:
            fd, _ = open_under(self.repo.storage_path, ["index.json"])
        except FileNotFoundError:
            raise UsageError(
                f"{self.repo.storage_path} is not an OCI image layout: it has no "
                "index.json"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            document = load_json(handle.read(MAX_BODY_BYTES + 1), where)
        index = parse_index(document, mt.OCI_INDEX, where)
        for entry in index.manifests:
            ref = entry.annotations.get(REF_NAME_ANNOTATION)
            if ref:
                self._refs.append((ref, str(entry.digest)))
            self._visit(str(entry.digest), entry.media_type, depth=0)
            rows = self._rows.get(str(entry.digest))
            if rows is not None and rows.size != entry.size:
                raise SizeMismatchError(
                    str(entry.digest),
                    entry.size,
                    rows.size,
                    f"{self.repo.storage_path}/index.json",
                )

    def _visit(self, digest: str, media_type: str, depth: int) -> None:
        # Entries of other types (a layer, an unknown artifact) are no
        # manifests, so their blobs are not parsed.
        if media_type not in MANIFEST_OR_INDEX or digest in self._reachable:
            return
        if depth > MAX_INDEX_DEPTH:
            raise InvalidContentError(
                f"indexes in {self.repo.storage_path} nest deeper than "
                f"{MAX_INDEX_DEPTH} levels at {digest}"
            )
        self._reachable.add(digest)
        rows = self._derived(digest)
        for child, child_type in rows.children if rows else ():
            self._visit(child, child_type, depth + 1)

    def _derived(self, digest: str) -> DerivedRows | None:
        if digest not in self._rows:
            parsed = parse_digest(digest)
            data = read_verified(self.repo, _blob_key(parsed), parsed)
            where = f"manifest {digest} in {self.repo.storage_path}"
            self._rows[digest] = derive_rows(data, parsed, where) if data else None
        return self._rows[digest]

    # MetadataSource

    def repository(self, key: str) -> Repository | None:
        return self.repo if key == self.repo.key else None

    def repositories_with_manifest(self, digest: str) -> list[Repository]:
        return [self.repo] if self.manifest(self.repo, digest) else []

    def repositories_with_tag(self, image: str, tag: str) -> list[Repository]:
        return [self.repo] if self.tag(self.repo, image, tag) else []

    def tag(self, repo: Repository, image: str, tag: str) -> Tag | None:
        if repo != self.repo:
            return None
        names = (tag, f"{image}:{tag}")
        digests = sorted({d for ref, d in self._refs if ref in names})
        if len(digests) > 1:
            raise AmbiguousError(
                f"ref name {tag!r} names {len(digests)} manifests in "
                f"{self.repo.storage_path}; choose one with --digest",
                candidates=digests,
            )
        if not digests:
            return None
        rows = self._derived(digests[0])
        return Tag(image, tag, digests[0], rows.media_type if rows else "")

    def image_names(self, repo: Repository, digest: str) -> list[str]:
        # Ref names may be bare tags, so a layout does not name its images.
        return []

    def manifest(self, repo: Repository, digest: str) -> StoredManifest | None:
        parsed = as_digest(digest)
        if repo != self.repo or parsed is None or digest not in self._reachable:
            return None
        rows = self._derived(digest)
        if rows is None:
            return None
        return StoredManifest(
            digest, rows.size, rows.sha256, rows.media_type, _blob_key(parsed)
        )

    def blob_refs(self, repo: Repository, manifest_digest: str) -> list[BlobRef]:
        if self.manifest(repo, manifest_digest) is None:
            return []
        refs = []
        for kind, digest in self._derived(manifest_digest).blobs:
            blob = self.blob(repo, digest)
            size, key = (blob.size, blob.storage_key) if blob else (None, None)
            refs.append(BlobRef(digest, kind, size, key))
        return sorted(refs, key=lambda ref: (ref.kind, ref.digest))

    def blob(self, repo: Repository, digest: str) -> Blob | None:
        parsed = as_digest(digest)
        if repo != self.repo or parsed is None:
            return None
        key = _blob_key(parsed)
        size = stored_size(self.repo, key)
        return Blob(digest, size, key) if size is not None else None

    def blob_digests_at(self, repo: Repository, storage_key: str) -> list[str]:
        # A layout stores a blob at the key its digest names, so no other
        # digest can be found there.
        blob = self._blob_at(repo, storage_key)
        return [blob.digest] if blob else []

    def _blob_at(self, repo: Repository, storage_key: str) -> Blob | None:
        parts = storage_key.split("/")
        if len(parts) != 3 or parts[0] != "blobs":
            return None
        digest = as_digest(f"{parts[1]}:{parts[2]}")
        return self.blob(repo, str(digest)) if digest else None

    def children(self, repo: Repository, parent_digest: str) -> list[str]:
        if self.manifest(repo, parent_digest) is None:
            return []
        children = self._derived(parent_digest).children
        return sorted({digest for digest, _ in children})

    def referrers(self, repo: Repository, subject_digest: str) -> list[Subject]:
        if repo != self.repo:
            return []
        found = []
        for digest in sorted(self._reachable):
            rows = self._derived(digest)
            if rows is not None and rows.subject == subject_digest:
                found.append(rows.as_subject())
        return found

    def open_blob(self, repo: Repository, key: str) -> tuple[int, str]:
        return open_blob(repo, key)

    def close(self) -> None:
        """Release nothing: the source keeps no file open between calls."""


def _blob_key(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"
