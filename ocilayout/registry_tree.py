"""MetadataSource over the storage tree of a plain distribution registry.

The registry (distribution 2.x with the filesystem storage driver) keeps
everything under ``<root>/docker/registry/v2``, where ``<root>`` is the
driver's ``rootdirectory``:

- ``blobs/<algorithm>/<first two hex>/<hex>/data``: every blob and manifest
  body, shared by all repositories;
- ``repositories/<name>/_manifests/revisions/<algorithm>/<hex>/link``: the
  manifests a repository holds;
- ``repositories/<name>/_manifests/tags/<tag>/current/link``: what a tag
  points at;
- ``repositories/<name>/_layers/<algorithm>/<hex>/link``: the blobs a
  repository may serve.

Each link file contains the digest it names. Rows map onto this tree as
follows. A repository is a registry repository, keyed by its name, and an
image's name is its repository's name. A manifest is stored when its
revision link and its data file exist. Blob references are parsed from the
manifest body, and a referenced blob is present only when the repository
has a ``_layers`` link for it and its data file exists, as the registry
itself enforces before serving a blob. A link whose data file is gone, as
garbage collection leaves behind, counts as absent.

Storage keys are paths relative to ``<root>``, and every file and folder is
opened without following symlinks, with the rules of
``ocilayout.store.open_blob``.
"""

from __future__ import annotations

import logging
import os

from .digest import Digest
from .errors import InvalidContentError, UsageError
from .layout_source import (
    DerivedRows,
    as_digest,
    derive_rows,
    open_under,
    read_verified,
    stored_size,
)
from .names import IMAGE_NAME, TAG
from .store import Blob, BlobRef, Repository, StoredManifest, Subject, Tag, open_blob

log = logging.getLogger(__name__)

TREE = ("docker", "registry", "v2")
_NAME = IMAGE_NAME
_TAG = TAG
# Longest link file read, because a link contains one digest.
_MAX_LINK_BYTES = 256
# Deepest repository name searched, in path components.
_MAX_NAME_DEPTH = 16


class RegistryTreeMetadata:
    """MetadataSource over a registry's storage tree rooted at ``root``.

    Raises UsageError when ``root`` has no ``docker/registry/v2`` folder,
    and InvalidContentError when a link file does not name the digest its
    path names. The source reads files only when asked and keeps none open.
    """

    # Each registry repository is one image, served under its own name.
    repository_is_image = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.path.realpath(root)
        try:
            fd, _ = open_under(self.root, TREE, directory=True)
        except FileNotFoundError:
            raise UsageError(
                f"no registry storage tree at {root}: "
                f"{'/'.join(TREE)} is missing; pass the registry's storage "
                "rootdirectory (for example /var/lib/registry)"
            ) from None
        os.close(fd)
        self._repositories: list[str] | None = None
        self._rows: dict[str, DerivedRows | None] = {}
        self._subjects: dict[str, dict[str, list[Subject]]] = {}

    def _repo(self, name: str) -> Repository:
        return Repository(name, name, "filesystem", self.root)

    def _repo_parts(self, name: str, *rest: str) -> list[str]:
        return [*TREE, "repositories", *name.split("/"), *rest]

    # Links and bodies

    def _read_link(self, parts: list[str]) -> Digest | None:
        """Read the digest in the link file at ``parts``, or None if absent."""
        try:
            fd, path = open_under(self.root, parts)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            content = handle.read(_MAX_LINK_BYTES + 1)
        digest = as_digest(content.decode("ascii", "replace"))
        if digest is None or len(content) > _MAX_LINK_BYTES:
            raise InvalidContentError(
                f"link file {path} does not contain a digest: {content[:80]!r}"
            )
        return digest

    def _linked(self, name: str, digest: Digest, *folder: str) -> bool:
        """Tell whether repository ``name`` has a link for ``digest`` in ``folder``."""
        parts = self._repo_parts(name, *folder, digest.algorithm, digest.hex, "link")
        linked = self._read_link(parts)
        if linked is not None and linked != digest:
            raise InvalidContentError(
                f"link file {os.path.join(self.root, *parts)} names {linked}, "
                f"not the digest {digest} of its path"
            )
        return linked is not None

    def _rows_of(self, digest: Digest) -> DerivedRows | None:
        """Parse the body stored for ``digest``, or return None if absent."""
        key = str(digest)
        if key not in self._rows:
            data = read_verified(self._repo(""), blob_key(digest), digest)
            where = f"manifest {digest} in {self.root}"
            self._rows[key] = derive_rows(data, digest, where) if data else None
        return self._rows[key]

    def _stored(self, repo: Repository, digest: str) -> DerivedRows | None:
        """Return a manifest's rows when ``repo`` contains it and its body exists."""
        parsed = as_digest(digest)
        if parsed is None or not self._valid_repo(repo):
            return None
        if not self._linked(repo.key, parsed, "_manifests", "revisions"):
            return None
        return self._rows_of(parsed)

    def _valid_repo(self, repo: Repository) -> bool:
        return repo.storage_path == self.root and bool(_NAME.fullmatch(repo.key))

    # Repositories

    def repository_names(self) -> list[str]:
        """List every repository in the tree, sorted; symlinks are skipped."""
        if self._repositories is None:
            self._repositories = sorted(self._walk_repositories())
        return self._repositories

    def _walk_repositories(self) -> list[str]:
        found: list[str] = []
        pending: list[list[str]] = [[]]
        while pending:
            name_parts = pending.pop()
            parts = [*TREE, "repositories", *name_parts]
            try:
                fd, _ = open_under(self.root, parts, directory=True)
            except FileNotFoundError:
                continue
            try:
                entries = [
                    (entry.name, entry.is_dir(follow_symlinks=False))
                    for entry in os.scandir(fd)
                ]
            finally:
                os.close(fd)
            skipped = [name for name, is_dir in entries if not is_dir]
            if skipped:
                log.debug("skipping non-directories %s in %s", skipped, parts)
            names = {name for name, is_dir in entries if is_dir}
            if "_manifests" in names and _NAME.fullmatch("/".join(name_parts)):
                found.append("/".join(name_parts))
            if len(name_parts) < _MAX_NAME_DEPTH:
                pending += [name_parts + [n] for n in names if not n.startswith("_")]
        return found

    def repository(self, key: str) -> Repository | None:
        if not _NAME.fullmatch(key):
            return None
        try:
            fd, _ = open_under(
                self.root, self._repo_parts(key, "_manifests"), directory=True
            )
        except FileNotFoundError:
            return None
        os.close(fd)
        return self._repo(key)

    def repositories_with_manifest(self, digest: str) -> list[Repository]:
        parsed = as_digest(digest)
        if parsed is None:
            return []
        return [
            self._repo(name)
            for name in self.repository_names()
            if self._linked(name, parsed, "_manifests", "revisions")
        ]

    def repositories_with_tag(self, image: str, tag: str) -> list[Repository]:
        repo = self.repository(image)
        if repo is None or self.tag(repo, image, tag) is None:
            return []
        return [repo]

    def tag(self, repo: Repository, image: str, tag: str) -> Tag | None:
        if image != repo.key or not _TAG.fullmatch(tag) or not self._valid_repo(repo):
            return None
        parts = self._repo_parts(repo.key, "_manifests", "tags", tag, "current", "link")
        digest = self._read_link(parts)
        if digest is None:
            return None
        rows = self._stored(repo, str(digest))
        return Tag(image, tag, str(digest), rows.media_type if rows else "")

    # Manifests and blobs

    def image_names(self, repo: Repository, digest: str) -> list[str]:
        # A registry repository is one image: its name is the image name.
        return [repo.key] if self.manifest(repo, digest) else []

    def manifest(self, repo: Repository, digest: str) -> StoredManifest | None:
        rows = self._stored(repo, digest)
        if rows is None:
            return None
        key = blob_key(as_digest(digest))
        return StoredManifest(digest, rows.size, rows.sha256, rows.media_type, key)

    def blob_refs(self, repo: Repository, manifest_digest: str) -> list[BlobRef]:
        rows = self._stored(repo, manifest_digest)
        refs = []
        for kind, digest in rows.blobs if rows else ():
            blob = self.blob(repo, digest)
            size, key = (blob.size, blob.storage_key) if blob else (None, None)
            refs.append(BlobRef(digest, kind, size, key))
        return sorted(refs, key=lambda ref: (ref.kind, ref.digest))

    def blob(self, repo: Repository, digest: str) -> Blob | None:
        parsed = as_digest(digest)
        if parsed is None or not self._valid_repo(repo):
            return None
        if not self._linked(repo.key, parsed, "_layers"):
            return None
        key = blob_key(parsed)
        size = stored_size(self._repo(repo.key), key)
        return Blob(digest, size, key) if size is not None else None

    def blob_digests_at(self, repo: Repository, storage_key: str) -> list[str]:
        # The tree stores a blob at the key its digest names, so no other
        # digest can be found there.
        parts = storage_key.split("/")
        prefix = [*TREE, "blobs"]
        if len(parts) != len(prefix) + 4 or parts[: len(prefix)] != prefix:
            return []
        digest = as_digest(f"{parts[-4]}:{parts[-2]}")
        if digest is None or blob_key(digest) != storage_key:
            return []
        return [str(digest)] if self.blob(repo, str(digest)) else []

    def children(self, repo: Repository, parent_digest: str) -> list[str]:
        rows = self._stored(repo, parent_digest)
        return sorted({digest for digest, _ in rows.children}) if rows else []

    def referrers(self, repo: Repository, subject_digest: str) -> list[Subject]:
        if not self._valid_repo(repo):
            return []
        if repo.key not in self._subjects:
            self._subjects[repo.key] = self._index_subjects(repo)
        return self._subjects[repo.key].get(subject_digest, [])

    def _index_subjects(self, repo: Repository) -> dict[str, list[Subject]]:
        # NOTE: distribution 2.x keeps no referrers index, so the first
        # lookup reads every manifest body the repository holds.
        by_subject: dict[str, list[Subject]] = {}
        for digest in self._revisions(repo.key):
            rows = self._rows_of(digest)
            if rows is not None and rows.subject is not None:
                by_subject.setdefault(rows.subject, []).append(rows.as_subject())
        for subjects in by_subject.values():
            subjects.sort(key=lambda subject: subject.manifest_digest)
        return by_subject

    def _revisions(self, name: str) -> list[Digest]:
        revisions = self._repo_parts(name, "_manifests", "revisions")
        found = []
        for algorithm in _list_directories(self.root, revisions):
            for encoded in _list_directories(self.root, [*revisions, algorithm]):
                digest = as_digest(f"{algorithm}:{encoded}")
                if digest is not None and self._linked(
                    name, digest, "_manifests", "revisions"
                ):
                    found.append(digest)
        return sorted(found)

    def open_blob(self, repo: Repository, key: str) -> tuple[int, str]:
        return open_blob(repo, key)

    def close(self) -> None:
        """Drop cached rows; the source keeps no file open between calls."""
        self._rows.clear()
        self._subjects.clear()


def blob_key(digest: Digest) -> str:
    """Return the storage key of a blob's data file, relative to the root."""
    return "/".join(
        [*TREE, "blobs", digest.algorithm, digest.hex[:2], digest.hex, "data"]
    )


def _list_directories(root: str, parts: list[str]) -> list[str]:
    """List the subdirectories of ``root/parts``, skipping symlinks."""
    try:
        fd, _ = open_under(root, parts, directory=True)
    except FileNotFoundError:
        return []
    try:
        return sorted(
            entry.name
            for entry in os.scandir(fd)
            if entry.is_dir(follow_symlinks=False)
        )
    finally:
        os.close(fd)
