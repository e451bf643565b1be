"""Resolution: from a digest or tag to one image manifest and its blobs.

Resolution reads only metadata and manifest bodies. It checks that each body
hashes to its digest, that the body and the ``manifest_blob_refs`` rows agree,
and returns a plan naming every blob the layout needs and where it is stored.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from . import mediatypes as mt
from .digest import Digest, parse_digest
from .errors import (
    AmbiguousError,
    DigestMismatchError,
    IntegrityError,
    InvalidContentError,
    NotAnImageError,
    UnsupportedManifestError,
    MetadataMissingError,
    NotFoundError,
    OCILayoutError,
    SizeMismatchError,
    UsageError,
)
from .manifest import (
    MAX_BODY_BYTES,
    Descriptor,
    Manifest,
    Platform,
    load_json,
    parse_index,
    parse_manifest,
    platform_from_config,
    sniff_media_type,
)
from .platforms import choose_child
from .store import MetadataSource, Repository, open_blob

log = logging.getLogger(__name__)

# Indexes nest in practice at most twice (buildx wraps a single platform with
# provenance in an index); the bound only has to stop hostile chains.
MAX_INDEX_DEPTH = 8


@dataclass(frozen=True)
class Request:
    """What to build: a digest, or an image and tag, optionally in one repository."""

    digest: Digest | None = None
    image: str | None = None
    tag: str | None = None
    repo: str | None = None
    platform: Platform | None = None

    def describe(self) -> str:
        if self.digest is not None:
            return str(self.digest)
        return f"{self.image}:{self.tag}"


@dataclass(frozen=True)
class PlannedBlob:
    """A config or layer blob the layout needs, with where the store keeps it."""

    descriptor: Descriptor
    kind: str
    storage_key: str | None

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest


@dataclass(frozen=True)
class Plan:
    repository: Repository
    requested: Digest
    chain: tuple[Digest, ...]
    manifest_digest: Digest
    manifest_body: bytes
    manifest: Manifest
    platform: Platform | None
    blobs: tuple[PlannedBlob, ...]
    image: str | None
    tag: str | None
    config: dict


def resolve(source: MetadataSource, request: Request) -> Plan:
    """Resolve ``request`` against ``source`` into a Plan, reading bodies only."""
    repo, digest, image, tag = _locate(source, request)
    chain: list[Digest] = []
    descriptor_platform: Platform | None = None
    media_hint: str | None = None
    seen: set[Digest] = set()
    while True:
        if len(chain) >= MAX_INDEX_DEPTH:
            raise InvalidContentError(
                f"index chain from {request.describe()} is deeper than "
                f"{MAX_INDEX_DEPTH} levels: {' -> '.join(map(str, chain))}"
            )
        if digest in seen:
            raise InvalidContentError(
                f"index cycle at {digest}: {' -> '.join(map(str, chain))}"
            )
        seen.add(digest)
        chain.append(digest)
        body, media_type, parsed = _load_body(source, repo, digest, media_hint)
        if media_type in mt.INDEX_TYPES:
            index = parse_index(parsed, media_type, f"index {digest}")
            child = choose_child(index.manifests, request.platform, f"index {digest}")
            log.debug("index %s: chose %s (%s)", digest, child.digest, child.platform)
            descriptor_platform = child.platform or descriptor_platform
            digest, media_hint = child.digest, child.media_type
            continue
        manifest = parse_manifest(parsed, media_type, f"manifest {digest}")
        break

    blobs = _plan_blobs(source, repo, digest, manifest)
    config = _load_config(repo, blobs[0])
    platform = descriptor_platform or platform_from_config(config)
    return Plan(
        repository=repo,
        requested=chain[0],
        chain=tuple(chain),
        manifest_digest=digest,
        manifest_body=body,
        manifest=manifest,
        platform=platform,
        blobs=blobs,
        image=image,
        tag=tag,
        config=config,
    )


def _locate(
    source: MetadataSource, request: Request
) -> tuple[Repository, Digest, str | None, str | None]:
    """Find the repository and top-level manifest digest of a request."""
    if request.digest is None and not (request.image and request.tag):
        raise UsageError("give --digest, or --image together with --tag")
    if request.repo is not None:
        repo = source.repository(request.repo)
        if repo is None:
            raise NotFoundError(f"repository {request.repo!r} not found in the store")
        candidates = [repo]
    elif request.digest is not None:
        candidates = source.repositories_with_manifest(str(request.digest))
    else:
        candidates = source.repositories_with_tag(request.image, request.tag)
    if not candidates:
        raise NotFoundError(f"manifest {request.describe()} not found in the store")
    if len(candidates) > 1:
        keys = [c.key for c in candidates]
        raise AmbiguousError(
            f"{request.describe()} exists in several repositories "
            f"({', '.join(keys)}); choose one with --repo",
            candidates=keys,
        )
    repo = candidates[0]
    if request.digest is not None:
        return repo, request.digest, request.image, request.tag

    row = source.tag(repo, request.image, request.tag)
    reference = request.tag
    if row is None and reference.startswith(("sha256:", "sha512:")):
        # A digest given as the tag is a digest reference, as in image@digest.
        return repo, parse_digest(reference, "tag"), request.image, None
    if row is None:
        raise NotFoundError(
            f"tag {request.image}:{request.tag} not found in repository {repo.key}"
        )
    try:
        digest = parse_digest(row.manifest_digest, "oci_tags.manifest_digest")
    except UsageError as exc:
        raise InvalidContentError(
            f"tag {request.image}:{request.tag} in repository {repo.key}: {exc}"
        ) from None
    return repo, digest, request.image, request.tag


def _load_body(
    source: MetadataSource,
    repo: Repository,
    digest: Digest,
    media_hint: str | None,
) -> tuple[bytes, str, dict]:
    """Read, verify and parse a stored manifest or index body."""
    stored = source.manifest(repo, str(digest))
    if stored is None:
        raise MetadataMissingError(
            f"manifest body {digest} is not stored in repository {repo.key}",
            reason="manifest-body-missing",
            digest=str(digest),
        )
    data = read_small_blob(repo, stored.storage_key, digest, stored.size)
    where = f"manifest {digest}"
    body = load_json(data, where)
    media_type = sniff_media_type(body, where)
    if media_type in mt.SCHEMA1_TYPES:
        raise UnsupportedManifestError(
            f"{where} is a Docker schema 1 manifest, which ocilayout does not "
            "convert; push the image again with a current client to get schema 2"
        )
    for other, label in ((media_hint, "the index descriptor"),):
        if other and "mediaType" in body and other != media_type:
            raise InvalidContentError(
                f"{where} declares mediaType {media_type} but {label} says {other}"
            )
    if media_type not in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
        raise NotAnImageError(
            f"{where} has media type {media_type}, which is not an image "
            "manifest or index: not a container image"
        )
    return data, media_type, body


def _plan_blobs(
    source: MetadataSource,
    repo: Repository,
    digest: Digest,
    manifest: Manifest,
) -> tuple[PlannedBlob, ...]:
    """Match the manifest's descriptors with its ``manifest_blob_refs`` rows."""
    where = f"manifest {digest}"
    config = manifest.config
    if config.media_type not in mt.IMAGE_CONFIG_TYPES:
        raise NotAnImageError(
            f"{where} has config media type {config.media_type}: not a container "
            "image (it is an artifact such as a Helm chart, signature or SBOM)"
        )
    rows = source.blob_refs(repo, str(digest))
    if not rows:
        raise MetadataMissingError(
            f"no manifest_blob_refs rows for {where} in repository {repo.key}",
            reason="no-blob-rows",
            digest=str(digest),
        )
    by_key = {(row.kind, row.digest): row for row in rows}
    wanted = [("config", config)] + [("layer", layer) for layer in manifest.layers]
    planned = []
    for kind, descriptor in wanted:
        row = by_key.pop((kind, str(descriptor.digest)), None)
        if row is None or row.storage_key is None:
            if kind == "layer" and descriptor.urls and row is None:
                planned.append(PlannedBlob(descriptor, kind, None))
                continue
            problem = "no manifest_blob_refs row" if row is None else "no live oci_blobs row"
            raise MetadataMissingError(
                f"{where}: {problem} for {kind} {descriptor.digest}",
                reason="blob-row-missing",
                digest=str(descriptor.digest),
            )
        if row.size != descriptor.size:
            raise IntegrityError(
                f"{where}: oci_blobs says {kind} {descriptor.digest} is "
                f"{row.size} bytes but the manifest says {descriptor.size}"
            )
        planned.append(PlannedBlob(descriptor, kind, row.storage_key))
    if by_key:
        extra = ", ".join(f"{kind} {d}" for kind, d in sorted(by_key))
        raise IntegrityError(
            f"{where}: manifest_blob_refs lists blobs the manifest does not: {extra}"
        )
    return tuple(planned)


def _load_config(repo: Repository, config: PlannedBlob) -> dict:
    data = read_small_blob(
        repo, config.storage_key, config.digest, config.descriptor.size
    )
    return load_json(data, f"config {config.digest}")


def read_small_blob(
    repo: Repository, key: str, digest: Digest, size: int
) -> bytes:
    """Read a JSON-sized stored object and verify its size and digest."""
    if size > MAX_BODY_BYTES:
        raise InvalidContentError(
            f"{digest} is recorded as {size} bytes, larger than the "
            f"{MAX_BODY_BYTES} byte limit for JSON bodies"
        )
    try:
        fd, path = open_blob(repo, key)
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"{digest} has a row in repository {repo.key} but its file "
            f"{exc.filename or key} is missing from the blob store"
        ) from None
    try:
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise IntegrityError(f"cannot read {path} for {digest}: {exc}") from exc
    if len(data) != size:
        raise SizeMismatchError(str(digest), size, len(data), path)
    actual = Digest.of_bytes(data, digest.algorithm)
    if actual != digest:
        raise DigestMismatchError(str(digest), str(actual), path)
    return data

