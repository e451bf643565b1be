"""Resolution: from a digest or tag to the manifests and blobs a layout needs.

Resolution reads only metadata and manifest bodies. It checks that each body
hashes to its digest, that each image manifest and its ``manifest_blob_refs``
rows agree, and returns a plan naming every body and blob to place and where
the store keeps it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from . import mediatypes as mt
from .digest import Digest, parse_digest
from .errors import (
    AmbiguousError,
    DigestMismatchError,
    IntegrityError,
    InvalidContentError,
    MetadataMissingError,
    NotAnImageError,
    NotFoundError,
    PlatformNotFoundError,
    SizeMismatchError,
    UnsupportedManifestError,
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
from .platforms import describe_platforms, host_platform, is_attestation, matches
from .store import MetadataSource, Repository

log = logging.getLogger(__name__)

# Indexes nest in practice at most twice (buildx wraps a single platform with
# provenance in an index); the bound only has to stop hostile chains.
MAX_INDEX_DEPTH = 8

SHAPES = ("scan", "full")


@dataclass(frozen=True)
class Request:
    """What to build: a digest, or an image and tag, optionally in one repository."""

    digest: Digest | None = None
    image: str | None = None
    tag: str | None = None
    repo: str | None = None
    platforms: tuple[Platform, ...] = ()
    shape: str = "scan"
    referrers: bool = False

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
class StoredBody:
    """A manifest or index body read from the store and verified."""

    digest: Digest
    media_type: str
    data: bytes
    document: dict


@dataclass
class Plan:
    """Everything a layout needs: index.json entries, bodies and blobs.

    ``entries[0]`` is the image (scan shape) or the top index (full shape);
    further entries are referrers. ``manifest`` and ``platform`` describe the
    chosen image manifest in the scan shape and are None in the full shape.
    """

    repository: Repository
    requested: Digest
    chain: list[Digest]
    image: str | None
    tag: str | None
    entries: list[dict]
    bodies: dict[Digest, bytes] = field(default_factory=dict)
    blobs: list[PlannedBlob] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    referrers: list[Digest] = field(default_factory=list)
    manifest: Manifest | None = None
    platform: Platform | None = None

    @property
    def top_digest(self) -> Digest:
        return parse_digest(self.entries[0]["digest"])

    @property
    def top_media_type(self) -> str:
        return self.entries[0]["mediaType"]


def resolve(source: MetadataSource, request: Request) -> Plan:
    """Resolve ``request`` against ``source`` into a Plan, reading bodies only."""
    if request.shape not in SHAPES:
        raise UsageError(
            f"invalid shape {request.shape!r}: use one of {', '.join(SHAPES)}"
        )
    repo, digest, image, tag = _locate(source, request)
    resolver = _Resolver(source, repo)
    if request.shape == "scan":
        plan = resolver.scan_plan(digest, request)
    else:
        plan = resolver.full_plan(digest, request)
    plan.image, plan.tag = image, tag
    if request.referrers:
        resolver.add_referrers(plan, listed=request.shape == "full")
    return plan


class _Resolver:
    def __init__(self, source: MetadataSource, repo: Repository):
        self.source = source
        self.repo = repo
        self._bodies: dict[Digest, StoredBody] = {}

    # Scan shape: one image manifest.

    def scan_plan(self, digest: Digest, request: Request) -> Plan:
        wanted = request.platforms[0] if request.platforms else None
        if len(request.platforms) > 1:
            raise UsageError(
                "the scan shape holds one image: give at most one --platform"
            )
        chain: list[Digest] = []
        body = self.body(digest, None)
        descriptor_platform = None
        if body.media_type in mt.INDEX_TYPES:
            child, chain = self._choose(body, wanted, [], 0)
            descriptor_platform = child.platform
            body = self.body(child.digest, child.media_type)
        chain.append(body.digest)
        manifest = self.image_manifest(body)
        blobs = self.image_blobs(body.digest, manifest)
        config = self._config(blobs[0])
        _check_diff_ids(config, manifest, body.digest)
        platform = descriptor_platform or platform_from_config(config)
        entry = _descriptor(body, platform)
        plan = Plan(
            repository=self.repo, requested=chain[0], chain=chain, image=None,
            tag=None, entries=[entry], manifest=manifest, platform=platform,
        )
        plan.bodies[body.digest] = body.data
        plan.blobs.extend(blobs)
        return plan

    def _choose(
        self,
        index_body: StoredBody,
        wanted: Platform | None,
        chain: list[Digest],
        depth: int,
    ) -> tuple[Descriptor, list[Digest]]:
        """Pick an image manifest under an index, following nested indexes.

        An explicit ``wanted`` platform must match. Without one the whole tree
        is searched for the host platform first, then for any linux child,
        then for the first runnable child, each search in index order.
        """
        if wanted is not None:
            tests = [lambda p: p is not None and matches(wanted, p)]
        else:
            host = host_platform()
            tests = [
                lambda p: p is not None and matches(host, p),
                lambda p: p is not None and p.os == "linux",
                lambda p: True,
            ]
        offered: list[str] = []
        for accept in tests:
            offered.clear()
            found = self._search(index_body, accept, chain, depth, offered)
            if found is not None:
                return found
        if not offered:
            raise NotFoundError(
                f"index {index_body.digest} has no runnable child: every child "
                "is an attestation or an artifact"
            )
        offers = list(dict.fromkeys(offered))
        raise PlatformNotFoundError(
            f"index {index_body.digest} has no child for platform {wanted}; "
            f"it offers: {', '.join(offers)}",
            candidates=offers,
        )

    def _search(
        self,
        index_body: StoredBody,
        accept,
        chain: list[Digest],
        depth: int,
        offered: list[str],
    ) -> tuple[Descriptor, list[Digest]] | None:
        """Return the first accepted image manifest in depth-first index order.

        ``offered`` collects the platforms of every runnable manifest seen,
        for the error message when nothing is accepted.
        """
        chain = self._enter(index_body.digest, chain, depth)
        index = parse_index(index_body.document, index_body.media_type,
                            f"index {index_body.digest}")
        for child in index.manifests:
            if is_attestation(child):
                continue
            if child.media_type in mt.INDEX_TYPES:
                if child.platform is not None and not accept(child.platform):
                    offered.append(str(child.platform))
                    continue
                nested = self.body(child.digest, child.media_type)
                found = self._search(nested, accept, chain, depth + 1, offered)
                if found is None:
                    continue
                descriptor, nested_chain = found
                if descriptor.platform is None and child.platform is not None:
                    descriptor = _with_platform(descriptor, child.platform)
                return descriptor, nested_chain
            offered.append(str(child.platform) if child.platform else "(no platform)")
            if accept(child.platform):
                log.debug("index %s: chose %s (%s)", index_body.digest,
                          child.digest, child.platform)
                return child, chain
        return None

    def _enter(self, digest: Digest, chain: list[Digest], depth: int) -> list[Digest]:
        if digest in chain:
            path = " -> ".join(map(str, chain + [digest]))
            raise InvalidContentError(f"index cycle: {path}")
        if depth >= MAX_INDEX_DEPTH:
            raise InvalidContentError(
                f"indexes nest deeper than {MAX_INDEX_DEPTH} levels at {digest}"
            )
        return chain + [digest]

    # Full shape: the stored index and every child the store holds.

    def full_plan(self, digest: Digest, request: Request) -> Plan:
        top = self.body(digest, None)
        plan = Plan(
            repository=self.repo, requested=digest, chain=[digest], image=None,
            tag=None, entries=[],
        )
        if top.media_type not in mt.INDEX_TYPES:
            manifest = self.image_manifest(top, require_image=False)
            blobs = self.image_blobs(top.digest, manifest)
            plan.bodies[top.digest] = top.data
            plan.blobs.extend(blobs)
            plan.entries.append(_descriptor(top, None))
            if request.platforms:
                plan.notes.append(
                    f"{digest} is a single manifest, so --platform was ignored"
                )
            return plan
        top = self._filter_platforms(top, request.platforms, plan)
        top = self._walk(top, plan, [], 0)
        plan.entries.append(_descriptor(top, None))
        return plan

    def _filter_platforms(
        self, top: StoredBody, platforms: tuple[Platform, ...], plan: Plan
    ) -> StoredBody:
        """Keep only the children of the listed platforms and their attestations."""
        if not platforms:
            return top
        index = parse_index(top.document, top.media_type, f"index {top.digest}")
        def accept(platform: Platform | None) -> bool:
            return platform is not None and any(matches(p, platform) for p in platforms)

        kept = []
        for child in index.manifests:
            if is_attestation(child):
                continue
            if child.media_type in mt.INDEX_TYPES and (
                child.platform is None or accept(child.platform)
            ):
                # A nested index is kept whole when any descendant matches.
                nested = self.body(child.digest, child.media_type)
                if self._search(nested, accept, [top.digest], 1, []) is not None:
                    kept.append(child)
            elif accept(child.platform):
                kept.append(child)
        if not kept:
            offers = describe_platforms(list(index.manifests))
            raise PlatformNotFoundError(
                f"index {top.digest} has no child for "
                f"{', '.join(map(str, platforms))}; it offers: " + ", ".join(offers),
                candidates=list(offers),
            )
        kept_digests = {str(child.digest) for child in kept}
        for child in index.manifests:
            reference = child.annotations.get("vnd.docker.reference.digest")
            if is_attestation(child) and reference in kept_digests:
                kept.append(child)
        rewritten = _rewrite_index(
            top, [child.raw for child in index.manifests if child in kept]
        )
        plan.notes.append(
            f"--platform kept {len(rewritten.document['manifests'])} of "
            f"{len(index.manifests)} children of index {top.digest}; the "
            f"layout's index is rewritten as {rewritten.digest}"
        )
        return rewritten

    def _walk(
        self, body: StoredBody, plan: Plan, chain: list[Digest], depth: int
    ) -> StoredBody:
        """Plan an index and every child the store holds; return the placed index.

        A child whose body or blob rows are missing is left out, and an index
        that lost a child (directly or below) is rewritten without it, so the
        layout never references a manifest it does not contain.
        """
        chain = self._enter(body.digest, chain, depth)
        index = parse_index(body.document, body.media_type, f"index {body.digest}")
        kept: list[dict] = []
        for child in index.manifests:
            try:
                child_body = self.body(child.digest, child.media_type)
                if child_body.media_type in mt.INDEX_TYPES:
                    placed = self._walk(child_body, plan, chain, depth + 1)
                    kept.append(_point_at(child.raw, placed))
                    continue
                manifest = self.image_manifest(child_body, require_image=False)
                blobs = self.image_blobs(child.digest, manifest)
            except MetadataMissingError as exc:
                plan.notes.append(f"left out child {child.digest}: {exc}")
                continue
            plan.bodies[child_body.digest] = child_body.data
            plan.blobs.extend(blobs)
            kept.append(child.raw)
        if not kept:
            raise MetadataMissingError(
                f"index {body.digest}: the store holds none of its children",
                reason="no-children-stored",
                digest=str(body.digest),
            )
        if kept != [child.raw for child in index.manifests]:
            body = _rewrite_index(body, kept)
            plan.notes.append(
                f"index {chain[-1]} is written as {body.digest} without the "
                "children left out"
            )
        plan.bodies[body.digest] = body.data
        return body

    # Referrers: manifests whose subject is a placed manifest.

    def add_referrers(self, plan: Plan, listed: bool) -> None:
        """Place referrers of every placed manifest, listing them if ``listed``.

        The scan shape places referrers without index.json entries, because
        Syft and Grype read an oci-dir only when index.json holds exactly one
        manifest.
        """
        for subject in list(plan.bodies):
            for row in self.source.referrers(self.repo, str(subject)):
                self._add_referrer(plan, subject, row, listed)
        if plan.referrers and not listed:
            plan.notes.append(
                f"placed {len(plan.referrers)} referrer(s) without index.json "
                "entries so scanners still read the layout; use --shape full "
                "to list them"
            )

    def _add_referrer(self, plan: Plan, subject: Digest, row, listed: bool) -> None:
        try:
            digest = parse_digest(row.manifest_digest, "oci_manifest_subjects digest")
        except UsageError as exc:
            raise InvalidContentError(str(exc)) from None
        if digest in plan.bodies:
            return
        try:
            body = self.body(digest, row.media_type)
            manifest = self.image_manifest(body, require_image=False)
            if manifest.subject is None or manifest.subject.digest != subject:
                raise InvalidContentError(
                    f"referrer {digest} is recorded for subject {subject} but its "
                    "body names another subject"
                )
            blobs = self.image_blobs(digest, manifest)
        except MetadataMissingError as exc:
            plan.notes.append(f"left out referrer {digest}: {exc}")
            return
        plan.bodies[digest] = body.data
        plan.blobs.extend(blobs)
        plan.referrers.append(digest)
        if not listed:
            return
        entry = _descriptor(body, None)
        entry["artifactType"] = manifest.artifact_type or manifest.config.media_type
        plan.entries.append(entry)

    # Bodies and blobs.

    def body(self, digest: Digest, media_hint: str | None) -> StoredBody:
        """Read, verify and parse a stored manifest or index body (cached)."""
        cached = self._bodies.get(digest)
        if cached is not None:
            return cached
        stored = self.source.manifest(self.repo, str(digest))
        if stored is None:
            raise MetadataMissingError(
                f"manifest body {digest} is not stored in repository {self.repo.key}",
                reason="manifest-body-missing",
                digest=str(digest),
            )
        data = read_small_blob(
            self.source, self.repo, stored.storage_key, digest, stored.size
        )
        where = f"manifest {digest}"
        document = load_json(data, where)
        media_type = sniff_media_type(document, where)
        if media_type in mt.SCHEMA1_TYPES:
            raise UnsupportedManifestError(
                f"{where} is a Docker schema 1 manifest, which ocilayout does not "
                "convert; push the image again with a current client to get schema 2"
            )
        _check_declared_type(document, media_type, media_hint, stored.content_type,
                             where)
        if media_type not in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
            raise NotAnImageError(
                f"{where} has media type {media_type}, which is not an image "
                "manifest or index: not a container image"
            )
        body = StoredBody(digest, media_type, data, document)
        self._bodies[digest] = body
        return body

    def image_manifest(self, body: StoredBody, require_image: bool = True) -> Manifest:
        where = f"manifest {body.digest}"
        if body.media_type in mt.INDEX_TYPES:
            raise InvalidContentError(f"{where} is an index where a manifest belongs")
        manifest = parse_manifest(body.document, body.media_type, where)
        config = manifest.config
        if require_image and config.media_type not in mt.IMAGE_CONFIG_TYPES:
            raise NotAnImageError(
                f"{where} has config media type {config.media_type}: not a "
                "container image (it is an artifact such as a Helm chart, "
                "signature or SBOM)"
            )
        if require_image and _is_attestation_manifest(manifest):
            types = sorted({layer.media_type for layer in manifest.layers})
            raise NotAnImageError(
                f"{where} has only {', '.join(types)} layers: it is an "
                "attestation or other artifact, not a container image; build "
                "the image it describes instead"
            )
        return manifest

    def image_blobs(self, digest: Digest, manifest: Manifest) -> list[PlannedBlob]:
        """Match a manifest's descriptors with its ``manifest_blob_refs`` rows.

        Rows that contradict the manifest (a malformed digest, a duplicate, a
        blob the manifest does not list, another size) are integrity errors
        and are reported before rows that are merely missing.
        """
        where = f"manifest {digest}"
        rows = self.source.blob_refs(self.repo, str(digest))
        if not rows:
            raise MetadataMissingError(
                f"no manifest_blob_refs rows for {where} in repository "
                f"{self.repo.key}",
                reason="no-blob-rows",
                digest=str(digest),
                manifest=str(digest),
            )
        by_key = _index_rows(rows, where)
        wanted = [("config", manifest.config)]
        wanted += [("layer", layer) for layer in manifest.layers]
        extra = sorted(set(by_key) - {(k, str(d.digest)) for k, d in wanted})
        if extra:
            listed = ", ".join(f"{kind} {d}" for kind, d in extra)
            raise IntegrityError(
                f"{where}: manifest_blob_refs lists blobs the manifest does not: "
                f"{listed}"
            )
        return [
            self._plan_one(digest, kind, descriptor, by_key.get((kind, str(descriptor.digest))))
            for kind, descriptor in wanted
        ]

    def _plan_one(self, manifest_digest: Digest, kind: str, descriptor: Descriptor,
                  row) -> PlannedBlob:
        where = f"manifest {manifest_digest}"
        if row is None or row.storage_key is None:
            if kind == "layer" and _may_be_absent(descriptor):
                return PlannedBlob(descriptor, kind, None)
            if row is not None:
                self._check_blob_row_digest(descriptor.digest, where)
            problem = (
                "no manifest_blob_refs row" if row is None
                else "no live oci_blobs row (absent or pending deletion)"
            )
            raise MetadataMissingError(
                f"{where}: {problem} for {kind} {descriptor.digest}",
                reason="blob-row-missing",
                digest=str(descriptor.digest),
                manifest=str(manifest_digest),
            )
        if row.size != descriptor.size:
            raise IntegrityError(
                f"{where}: oci_blobs says {kind} {descriptor.digest} is "
                f"{row.size} bytes but the manifest says {descriptor.size}"
            )
        return PlannedBlob(descriptor, kind, row.storage_key)

    def _check_blob_row_digest(self, digest: Digest, where: str) -> None:
        """Reject an oci_blobs row stored under ``digest``'s key with another digest."""
        key = f"oci-blobs/{digest}"
        for value in self.source.blob_digests_at(self.repo, key):
            if value != str(digest):
                raise InvalidContentError(
                    f"{where}: the oci_blobs row at storage key {key} has digest "
                    f"{value!r}, not {digest}"
                )

    def _config(self, config: PlannedBlob) -> dict:
        data = read_small_blob(
            self.source,
            self.repo,
            config.storage_key,
            config.digest,
            config.descriptor.size,
        )
        return load_json(data, f"config {config.digest}")


def _check_diff_ids(config: dict, manifest: Manifest, digest: Digest) -> None:
    """Reject an image whose config lists another number of layers than it has."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidContentError(
            f"config {manifest.config.digest} of manifest {digest} has no "
            "rootfs.diff_ids array"
        )
    if len(diff_ids) != len(manifest.layers):
        raise InvalidContentError(
            f"config {manifest.config.digest} lists {len(diff_ids)} rootfs.diff_ids "
            f"but manifest {digest} has {len(manifest.layers)} layers"
        )


def _is_attestation_manifest(manifest: Manifest) -> bool:
    """Tell whether an image manifest carries statements, not a filesystem.

    Buildx attestations use an image config but in-toto JSON layers, so no
    scanner finds a filesystem in them.
    """
    if manifest.artifact_type and "in-toto" in manifest.artifact_type:
        return True
    return bool(manifest.layers) and all(
        "in-toto" in layer.media_type
        or layer.media_type.endswith("+json")
        or layer.media_type == "application/json"
        for layer in manifest.layers
    )


def _index_rows(rows: list, where: str) -> dict[tuple[str, str], object]:
    """Key blob reference rows by (kind, digest), rejecting malformed or duplicate rows."""
    by_key: dict[tuple[str, str], object] = {}
    for row in rows:
        try:
            parse_digest(row.digest, "manifest_blob_refs.blob_digest")
        except UsageError as exc:
            raise InvalidContentError(f"{where}: {exc}") from None
        key = (row.kind, row.digest)
        if row.kind not in ("config", "layer"):
            raise InvalidContentError(
                f"{where}: manifest_blob_refs row for {row.digest} has kind "
                f"{row.kind!r}, expected config or layer"
            )
        previous = by_key.get(key)
        if previous is not None:
            table = (
                "oci_blobs"
                if previous.ref_id is not None and previous.ref_id == row.ref_id
                else "manifest_blob_refs"
            )
            raise IntegrityError(
                f"{where}: duplicate {table} rows for {row.kind} {row.digest}"
            )
        by_key[key] = row
    return by_key


def _locate(
    source: MetadataSource, request: Request
) -> tuple[Repository, Digest, str | None, str | None]:
    """Find the repository and top-level manifest digest of a request."""
    if request.digest is None and not (request.image and request.tag):
        raise UsageError("give --digest, or --image together with --tag")
    if request.repo is not None:
        repo = source.repository(request.repo)
        if repo is None:
            raise NotFoundError(
                f"repository {request.repo!r} not found in the store; check --repo"
            )
        candidates = [repo]
    elif request.digest is not None:
        candidates = source.repositories_with_manifest(str(request.digest))
    else:
        candidates = source.repositories_with_tag(request.image, request.tag)
        if not candidates and request.tag.startswith(("sha256:", "sha512:")):
            parse_digest(request.tag, "tag")
            candidates = source.repositories_with_manifest(request.tag)
    if not candidates:
        if request.digest is not None:
            raise NotFoundError(
                f"manifest {request.digest} not found in any repository of the store"
            )
        raise NotFoundError(
            f"tag {request.image}:{request.tag} not found in any repository of "
            "the store"
        )
    if len(candidates) > 1:
        keys = [c.key for c in candidates]
        raise AmbiguousError(
            f"{request.describe()} exists in several repositories "
            f"({', '.join(keys)}); choose one with --repo",
            candidates=keys,
        )
    repo = candidates[0]
    if request.digest is not None:
        _check_names_digest(source, repo, request)
        return repo, request.digest, request.image, request.tag
    return (repo, *_lookup_tag(source, repo, request.image, request.tag))


def _check_names_digest(source: MetadataSource, repo: Repository, request: Request) -> None:
    """Reject an --image or --tag given with --digest that the store contradicts."""
    digest = str(request.digest)
    if request.image and request.tag:
        found, _, _ = _lookup_tag(source, repo, request.image, request.tag)
        if str(found) != digest:
            raise NotFoundError(
                f"tag {request.image}:{request.tag} in repository {repo.key} "
                f"points to {found}, not to --digest {digest}; drop --tag to "
                "build the digest, or --digest to build the tag"
            )
    elif request.image:
        # A source that records no image names (an OCI layout) cannot check.
        names = source.image_names(repo, digest)
        if names and request.image not in names:
            raise NotFoundError(
                f"manifest {digest} in repository {repo.key} was pushed as "
                f"{', '.join(names)}, not as --image {request.image}"
            )


def _lookup_tag(
    source: MetadataSource, repo: Repository, image: str, tag: str
) -> tuple[Digest, str | None, str | None]:
    row = source.tag(repo, image, tag)
    if row is None and tag.startswith(("sha256:", "sha512:")):
        # A digest given as the tag is a digest reference, as in image@digest.
        return parse_digest(tag, "tag"), image, None
    if row is None:
        raise NotFoundError(f"tag {image}:{tag} not found in repository {repo.key}")
    try:
        digest = parse_digest(row.manifest_digest, "oci_tags.manifest_digest")
    except UsageError as exc:
        raise InvalidContentError(
            f"tag {image}:{tag} in repository {repo.key}: {exc}"
        ) from None
    if tag.startswith(("sha256:", "sha512:")):
        if parse_digest(tag, "tag") != digest:
            raise InvalidContentError(
                f"tag row {image}:{tag} in repository {repo.key} points at "
                f"another digest, {digest}"
            )
        return digest, image, None
    return digest, image, tag


def _check_declared_type(
    document: dict,
    media_type: str,
    media_hint: str | None,
    stored_type: str | None,
    where: str,
) -> None:
    """Reject a body whose own mediaType contradicts what refers to it."""
    if "mediaType" not in document:
        return
    for other, label in ((media_hint, "the index descriptor"),
                         (stored_type, "the artifacts row")):
        if other and other != media_type:
            raise InvalidContentError(
                f"{where} declares mediaType {media_type} but {label} says {other}"
            )


def _may_be_absent(descriptor: Descriptor) -> bool:
    """Tell whether a layer may legitimately be missing from the store."""
    return bool(descriptor.urls) or mt.is_non_distributable(descriptor.media_type)


def _descriptor(body: StoredBody, platform: Platform | None) -> dict:
    entry: dict = {
        "mediaType": body.media_type,
        "digest": str(body.digest),
        "size": len(body.data),
    }
    if platform is not None:
        entry["platform"] = platform.to_json()
    return entry


def _rewrite_index(body: StoredBody, children: list[dict]) -> StoredBody:
    """Return a copy of an index body listing only ``children``."""
    document = dict(body.document)
    document["manifests"] = children
    data = json.dumps(document, separators=(",", ":")).encode()
    digest = Digest.of_bytes(data, body.digest.algorithm)
    return StoredBody(digest, body.media_type, data, document)


def _point_at(raw: dict, placed: StoredBody) -> dict:
    """Return a child descriptor updated to a possibly rewritten body."""
    if raw.get("digest") == str(placed.digest):
        return raw
    return {**raw, "digest": str(placed.digest), "size": len(placed.data)}


def _with_platform(child: Descriptor, platform: Platform) -> Descriptor:
    return Descriptor(
        media_type=child.media_type, digest=child.digest, size=child.size,
        platform=platform, annotations=child.annotations,
        artifact_type=child.artifact_type, urls=child.urls, raw=child.raw,
    )


def read_small_blob(
    source: MetadataSource, repo: Repository, key: str, digest: Digest, size: int
) -> bytes:
    """Read a JSON-sized stored object and verify its size and digest."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidContentError(
            f"{digest} has the invalid recorded size {size!r} in repository "
            f"{repo.key}; a size is a non-negative integer"
        )
    if size > MAX_BODY_BYTES:
        raise InvalidContentError(
            f"{digest} is recorded as {size} bytes, larger than the "
            f"{MAX_BODY_BYTES} byte limit for JSON bodies"
        )
    try:
        fd, path = source.open_blob(repo, key)
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
