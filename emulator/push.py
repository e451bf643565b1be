"""Push an image from a source into the emulated store, as a registry would.

A push writes content first and metadata last. Blobs and manifest bodies go
to their content-addressed storage keys through temporary files, so a failed
verification leaves no file. Every row of one push is then written in a
single transaction, so a reader sees all of the push or none of it.

Rows written, for each manifest reached from the pushed root:

- image manifest: ``oci_blobs`` for its config and layers,
  ``manifest_blob_refs`` (kind ``config`` or ``layer``), an ``artifacts`` row
  for its digest reference;
- index: its children first (recursively), then ``oci_manifest_refs`` edges
  and an ``artifacts`` row; no ``manifest_blob_refs``;
- any manifest with a ``subject``: an ``oci_manifest_subjects`` row;
- the root also gets an ``oci_tags`` row and an ``artifacts`` row for the tag.

Children pushed by digest get an ``oci_tags`` row whose tag is their digest,
as a registry records a manifest PUT by digest reference.

Pushing the same content twice changes no row; re-tagging moves the tag.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ocilayout import mediatypes
from ocilayout.digest import Digest
from ocilayout.errors import InvalidContentError, NotFoundError, UsageError
from ocilayout.names import IMAGE_NAME, TAG

from .sources import Descriptor, ImageSource, open_source
from .store import EmulatorStore, Repository, new_id, utc_now

logger = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 8


@dataclass
class _Plan:
    """Rows collected while content is written, inserted in one transaction."""

    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)
    blob_refs: set[tuple[str, str, str]] = field(default_factory=set)
    manifest_refs: set[tuple[str, str]] = field(default_factory=set)
    subjects: dict[str, tuple] = field(default_factory=dict)
    # digest -> (size, media type, storage key, sha256 hex of the body)
    manifests: dict[str, tuple[int, str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowWriter:
    """The functions that write a push's rows in one SQL dialect."""

    insert_rows: Callable[..., None]
    upsert_reference: Callable[..., None]


def push(
    store: EmulatorStore,
    repo_key: str,
    image: str,
    tag: str | None,
    source: ImageSource | str | os.PathLike[str],
    *,
    allow_partial: bool = False,
    rows: RowWriter | None = None,
) -> str:
    """Push the image in ``source`` as ``<image>:<tag>`` and return its digest.

    ``source`` is an open ImageSource or a source spec for ``open_source``.
    With ``tag`` None the image is pushed by digest only. A child manifest or
    blob missing from the source raises NotFoundError, unless
    ``allow_partial`` is true: then it is skipped while the rows that
    reference it are still written, which yields the incomplete stores that
    tests need. Non-distributable layers may always be absent. The
    repository is created first, so it remains when the push fails.
    ``rows`` writes the rows in the store's SQL dialect (default: SQLite).
    """
    _check_image_name(image)
    if tag is not None:
        _check_tag(tag)
    rows = rows or SQLITE_ROWS
    if isinstance(source, ImageSource):
        return _push_source(store, repo_key, image, tag, source, allow_partial, rows)
    with open_source(source) as opened:
        return _push_source(store, repo_key, image, tag, opened, allow_partial, rows)


def _push_source(
    store: EmulatorStore,
    repo_key: str,
    image: str,
    tag: str | None,
    source: ImageSource,
    allow_partial: bool,
    rows: RowWriter,
) -> str:
    repository = store.ensure_repository(repo_key)
    pusher = _Pusher(store, repository, source, allow_partial)

    # Content first: blobs and manifest bodies, children before parents.
    pusher.push_manifest(source.root, depth=0, trail=())

    # Then every row in one transaction.
    root = str(source.root.digest)
    with store.transaction() as connection:
        rows.insert_rows(connection, repository, image, pusher.plan)
        if tag is not None:
            rows.upsert_reference(connection, repository, image, tag, root, pusher.plan)
    logger.info("pushed %s:%s as %s into %s", image, tag, root, repo_key)
    return root


class _Pusher:
    def __init__(
        self,
        store: EmulatorStore,
        repository: Repository,
        source: ImageSource,
        allow_partial: bool,
    ):
        self.store = store
        self.repository = repository
        self.source = source
        self.allow_partial = allow_partial
        self.plan = _Plan()

    def push_manifest(
        self, descriptor: Descriptor, depth: int, trail: tuple[str, ...]
    ) -> None:
        digest = str(descriptor.digest)
        if digest in self.plan.manifests:
            return
        if digest in trail or depth > MAX_INDEX_DEPTH:
            raise InvalidContentError(
                f"index nesting at {digest} is cyclic or deeper than "
                f"{MAX_INDEX_DEPTH} levels in {self.source.name}"
            )

        body, document = self.source.read_json(descriptor)
        media_type = _media_type_of(descriptor, document, self.source.name)
        if media_type in mediatypes.INDEX_TYPES:
            self._push_children(digest, document, depth, trail + (digest,))
        elif media_type in mediatypes.MANIFEST_TYPES or "config" in document:
            self._push_image_blobs(digest, document)
        else:
            raise UsageError(
                f"cannot push {media_type} {digest} from {self.source.name}: "
                f"expected an image manifest or an image index"
            )

        self._record_subject(digest, media_type, len(body), document)
        key = f"oci-manifests/{digest}"
        self.store.write_object(self.repository, key, body)
        checksum = Digest.of_bytes(body).hex
        self.plan.manifests[digest] = (len(body), media_type, key, checksum)

    def _push_children(
        self, digest: str, index: dict[str, Any], depth: int, trail: tuple[str, ...]
    ) -> None:
        children = index.get("manifests")
        if not isinstance(children, list):
            raise InvalidContentError(
                f"index {digest} in {self.source.name} has no manifests list"
            )
        for raw in children:
            child = Descriptor.from_json(raw, f"index {digest}")
            self.plan.manifest_refs.add((digest, str(child.digest)))
            if not self.source.has_blob(child.digest):
                self._missing("child manifest", child, digest)
                continue
            self.push_manifest(child, depth + 1, trail)

    def _push_image_blobs(self, digest: str, manifest: dict[str, Any]) -> None:
        where = f"manifest {digest}"
        config = manifest.get("config")
        layers = manifest.get("layers")
        if config is None or not isinstance(layers, list):
            raise InvalidContentError(
                f"{where} in {self.source.name} lacks a config or a layers list"
            )

        entries = [("config", Descriptor.from_json(config, where))]
        entries += [("layer", Descriptor.from_json(raw, where)) for raw in layers]
        for kind, blob in entries:
            self.plan.blob_refs.add((digest, str(blob.digest), kind))
            self._push_blob(blob, digest)

    def _push_blob(self, blob: Descriptor, manifest_digest: str) -> None:
        digest = str(blob.digest)
        if digest in self.plan.blobs:
            return
        if not self.source.has_blob(blob.digest):
            # A registry accepts manifests whose non-distributable layers
            # (foreign media types, or descriptors with urls) it never received.
            foreign = mediatypes.is_non_distributable(blob.media_type)
            if not (foreign or blob.raw.get("urls")):
                self._missing("blob", blob, manifest_digest)
            return

        key = f"oci-blobs/{digest}"
        with self.source.open_blob(blob) as stream:
            self.store.write_object(self.repository, key, stream)
        self.plan.blobs[digest] = (blob.size, key)

    def _record_subject(
        self, digest: str, media_type: str, size: int, document: dict[str, Any]
    ) -> None:
        subject = document.get("subject")
        if subject is None:
            return
        target = Descriptor.from_json(subject, f"subject of {digest}")
        artifact_type = document.get("artifactType")
        if artifact_type is None and isinstance(document.get("config"), dict):
            artifact_type = document["config"].get("mediaType")
        annotations = document.get("annotations")
        self.plan.subjects[digest] = (
            str(target.digest),
            media_type,
            artifact_type,
            size,
            json.dumps(annotations, sort_keys=True) if annotations else None,
        )

    def _missing(self, what: str, descriptor: Descriptor, parent: str) -> None:
        if self.allow_partial:
            logger.info(
                "skipping %s %s absent from %s",
                what,
                descriptor.digest,
                self.source.name,
            )
            return
        raise NotFoundError(
            f"{what} {descriptor.digest} referenced by {parent} is missing from "
            f"source {self.source.name}; pass allow_partial=True (--allow-partial) "
            f"to push it anyway"
        )


def _media_type_of(
    descriptor: Descriptor, document: dict[str, Any], source_name: str
) -> str:
    declared = document.get("mediaType")
    if declared is not None and declared != descriptor.media_type:
        raise InvalidContentError(
            f"manifest {descriptor.digest} in {source_name} declares mediaType "
            f"{declared!r} but its descriptor has {descriptor.media_type!r}"
        )
    return descriptor.media_type


# Rows


def _insert_rows(connection, repository: Repository, image: str, plan: _Plan) -> None:
    now = utc_now()
    repo_id = repository.id

    for digest, (size, key) in sorted(plan.blobs.items()):
        connection.execute(
            "INSERT INTO oci_blobs (id, repository_id, digest, size_bytes,"
            " storage_key, pending_delete_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, NULL, ?)"
            " ON CONFLICT (repository_id, digest) DO UPDATE SET"
            " pending_delete_at = NULL, size_bytes = excluded.size_bytes,"
            " storage_key = excluded.storage_key"
            " WHERE oci_blobs.pending_delete_at IS NOT NULL"
            " OR oci_blobs.size_bytes != excluded.size_bytes"
            " OR oci_blobs.storage_key != excluded.storage_key",
            (new_id(), repo_id, digest, size, key, now),
        )

    for manifest, blob, kind in sorted(plan.blob_refs):
        connection.execute(
            "INSERT INTO manifest_blob_refs (id, repository_id, manifest_digest,"
            " blob_digest, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (new_id(), repo_id, manifest, blob, kind, now),
        )

    for parent, child in sorted(plan.manifest_refs):
        connection.execute(
            "INSERT INTO oci_manifest_refs (id, repository_id, parent_digest,"
            " child_digest, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (new_id(), repo_id, parent, child, now),
        )

    for digest, row in sorted(plan.subjects.items()):
        connection.execute(
            "INSERT INTO oci_manifest_subjects (id, repository_id, manifest_digest,"
            " subject_digest, media_type, artifact_type, size_bytes, annotations,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (new_id(), repo_id, digest, *row, now),
        )

    for digest in sorted(plan.manifests):
        _upsert_reference(connection, repository, image, digest, digest, plan)


def _upsert_reference(
    connection,
    repository: Repository,
    image: str,
    reference: str,
    digest: str,
    plan: _Plan,
) -> None:
    """Record ``<image>:<reference>`` -> ``digest`` in artifacts and oci_tags."""
    size, media_type, key, checksum = plan.manifests[digest]
    now = utc_now()

    connection.execute(
        "INSERT INTO artifacts (id, repository_id, path, name, version, size_bytes,"
        " checksum_sha256, content_type, storage_key, is_deleted, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
        " ON CONFLICT (repository_id, path) DO UPDATE SET"
        " size_bytes = excluded.size_bytes, checksum_sha256 = excluded.checksum_sha256,"
        " content_type = excluded.content_type, storage_key = excluded.storage_key,"
        " is_deleted = 0, updated_at = excluded.updated_at"
        " WHERE artifacts.storage_key != excluded.storage_key"
        " OR artifacts.content_type != excluded.content_type"
        " OR artifacts.is_deleted != 0",
        (
            new_id(),
            repository.id,
            f"v2/{image}/manifests/{reference}",
            f"{image}:{reference}",
            reference,
            size,
            checksum,
            media_type,
            key,
            now,
            now,
        ),
    )
    connection.execute(
        "INSERT INTO oci_tags (id, repository_id, name, tag, manifest_digest,"
        " manifest_content_type, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (repository_id, name, tag) DO UPDATE SET"
        " manifest_digest = excluded.manifest_digest,"
        " manifest_content_type = excluded.manifest_content_type,"
        " updated_at = excluded.updated_at"
        " WHERE oci_tags.manifest_digest != excluded.manifest_digest"
        " OR oci_tags.manifest_content_type != excluded.manifest_content_type",
        (new_id(), repository.id, image, reference, digest, media_type, now, now),
    )


def _check_image_name(image: str) -> None:
    if not IMAGE_NAME.fullmatch(image):
        raise UsageError(
            f"invalid image name {image!r}: use lowercase path components such "
            f"as 'library/alpine'"
        )


def _check_tag(tag: str) -> None:
    if not TAG.fullmatch(tag):
        raise UsageError(
            f"invalid tag {tag!r}: use up to 128 letters, digits, '_', '.' and "
            f"'-', not starting with '.' or '-'"
        )


SQLITE_ROWS = RowWriter(_insert_rows, _upsert_reference)
