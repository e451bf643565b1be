"""Compatibility of a layout with known consumers, with the reason when one fails.

The rules restate behaviour measured on the spec-fixtures corpus with
skopeo 1.9.3 (``skopeo copy oci:DIR:REF dir:OUT``), umoci 0.4.7
(``umoci unpack --rootless --image DIR:REF``) and syft 1.18.1 (``syft scan
oci-dir:DIR``); Grype shares syft's stereoscope loader. A layout with
errors is reported unreadable for every consumer, even where a lenient
consumer reads it anyway, because its content cannot be trusted.
"""

from __future__ import annotations

from collections import Counter

from .. import mediatypes as mt
from ..platforms import host_platform
from .walk import Entry, Target

CONSUMERS = ("syft", "grype", "skopeo", "umoci")
OCI_ENTRY_TYPES = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX})


def summarize(
    entries: list[Entry], error_codes: list[str]
) -> dict[str, tuple[bool, str]]:
    """Return ``consumer -> (readable, reason)`` for syft, grype, skopeo and umoci."""
    if error_codes:
        codes = ", ".join(sorted(set(error_codes)))
        reason = f"the layout has errors ({codes}); fix them first"
        return {name: (False, reason) for name in CONSUMERS}

    stereoscope = _stereoscope(entries)
    return {
        "syft": stereoscope,
        "grype": stereoscope,
        "skopeo": _by_entry(entries, _skopeo_problem, "skopeo"),
        "umoci": _by_entry(entries, _umoci_problem, "umoci"),
    }


def _stereoscope(entries: list[Entry]) -> tuple[bool, str]:
    if len(entries) != 1:
        return False, (
            f"index.json contains {len(entries)} descriptors; stereoscope reads an "
            "oci-dir only when it contains exactly one"
        )
    entry = entries[0]
    if entry.ref.media_type not in mt.MANIFEST_TYPES:
        return False, (
            f"the descriptor in index.json is {entry.ref.media_type}; stereoscope "
            "needs an OCI or Docker v2 image manifest there"
        )
    problem = _sha256_problem(entry.target) or _layer_type_problem(entry.target)
    if problem:
        return False, problem
    return True, "index.json contains exactly one image manifest"


def _by_entry(entries: list[Entry], judge, consumer: str) -> tuple[bool, str]:
    """Collect the index.json entries ``judge`` finds readable, with reasons for the rest."""
    names = Counter(e.ref_name for e in entries if e.ref_name is not None)
    readable = []
    reasons = []
    for entry in entries:
        unique = entry.ref_name is not None and names[entry.ref_name] == 1
        problem = judge(entry, unique, len(entries))
        if problem:
            reasons.append(f"{entry.ref.path} {problem}")
        else:
            readable.append(entry.ref_name or "the only image")
    if readable:
        return True, "readable: " + ", ".join(readable)
    if not reasons:
        return False, f"index.json lists nothing for {consumer} to read"
    return False, "; ".join(reasons)


def _skopeo_problem(entry: Entry, unique: bool, count: int) -> str | None:
    if not unique and count != 1:
        return "has no unique ref name to address it by"
    if entry.ref.media_type not in OCI_ENTRY_TYPES:
        return f"is {entry.ref.media_type}; skopeo reads only OCI types in index.json"
    target = entry.target
    if target is not None and target.kind == "index":
        target = _host_child(target)
        if target is None:
            return f"is an index without an image for this host ({_host()})"
        if target.kind != "manifest":
            return "nests an index in an index, which skopeo 1.9.3 does not resolve"
    return _sha256_problem(target)


def _umoci_problem(entry: Entry, unique: bool, count: int) -> str | None:
    if not unique:
        return "has no unique ref name, which umoci needs to address it"
    if entry.ref.media_type not in OCI_ENTRY_TYPES:
        return f"is {entry.ref.media_type}; umoci reads only OCI types in index.json"
    manifests = _manifests_below(entry.target)
    if len(manifests) != 1:
        return (
            f"leads to {len(manifests)} image manifests; umoci needs exactly one "
            "and does not choose by platform"
        )
    target = manifests[0]
    if target.config_media_type != mt.OCI_CONFIG:
        return "is an artifact; umoci unpacks only OCI image configs"
    if mt.OCI_LAYER_ZSTD in target.layer_media_types:
        return "has a zstd layer, which umoci 0.4.7 cannot unpack"
    return _sha256_problem(target)


def _sha256_problem(target: Target | None) -> str | None:
    if target is None:
        return "could not be checked"
    others = sorted(target.algorithms - {"sha256"})
    if others:
        return (
            f"uses {', '.join(others)} digests; skopeo 1.9.3, umoci 0.4.7 and "
            "syft 1.18.1 verify only sha256"
        )
    return None


def _layer_type_problem(target: Target | None) -> str | None:
    if target is None:
        return "could not be checked"
    for media_type in target.layer_media_types:
        if media_type is None or mt.compression_of(media_type) is None:
            return f"has a layer of media type {media_type}, which stereoscope rejects"
    if not target.platform_specific:
        return "is an artifact, not a container image"
    return None


def _manifests_below(target: Target | None) -> list[Target]:
    if target is None:
        return []
    if target.kind == "manifest":
        return [target]
    found = []
    for _, child in target.children:
        found.extend(_manifests_below(child))
    return found


def _host() -> str:
    host = host_platform()
    return f"{host.os}/{host.architecture}"


def _host_child(index: Target) -> Target | None:
    host = host_platform()
    for platform, child in index.children:
        if platform is None:
            continue
        if (platform.get("os"), platform.get("architecture")) != (
            host.os,
            host.architecture,
        ):
            continue
        return child
    return None
