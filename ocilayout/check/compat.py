"""Which known consumers can read a layout, and why not.

The rules restate behaviour measured with skopeo 1.9.3, umoci 0.4.7 and
syft 1.18.1 (Grype shares syft's stereoscope loader); the spec-fixtures
tests compare them with the real binaries on every corpus case.
"""

from __future__ import annotations

from collections import Counter

from .. import mediatypes as mt
from ..platforms import host_platform
from .walk import Entry, Target

OCI_ENTRY_TYPES = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX})


def summarize(
    entries: list[Entry], error_codes: list[str]
) -> dict[str, tuple[bool, str]]:
    """Return ``consumer -> (readable, reason)`` for syft, grype, skopeo and umoci."""
    if error_codes:
        codes = ", ".join(sorted(set(error_codes)))
        reason = f"the layout has errors ({codes}); fix them first"
        return {name: (False, reason) for name in ("syft", "grype", "skopeo", "umoci")}

    stereoscope = _stereoscope(entries)
    return {
        "syft": stereoscope,
        "grype": stereoscope,
        "skopeo": _skopeo(entries),
        "umoci": _umoci(entries),
    }


def _stereoscope(entries: list[Entry]) -> tuple[bool, str]:
    if len(entries) != 1:
        return False, (
            f"index.json holds {len(entries)} descriptors; stereoscope reads an "
            "oci-dir only when it holds exactly one"
        )
    entry = entries[0]
    if entry.ref.media_type not in mt.MANIFEST_TYPES:
        return False, (
            f"the descriptor in index.json is {entry.ref.media_type}; stereoscope "
            "needs an OCI or Docker v2 image manifest there, not an index"
        )
    if entry.target is None or not entry.target.platform_specific:
        return False, "the manifest in index.json is an artifact, not a container image"
    return True, "index.json holds exactly one image manifest"


def _skopeo(entries: list[Entry]) -> tuple[bool, str]:
    names = _unique_names(entries)
    readable = []
    reasons = []
    for entry in entries:
        address = entry.ref_name if entry.ref_name in names else None
        if address is None and len(entries) == 1:
            address = "(no ref)"
        problem = _oci_image_problem(entry, "skopeo")
        if address is None:
            problem = problem or "has no unique ref name to address it"
        if problem:
            reasons.append(f"{entry.ref.path} {problem}")
        else:
            readable.append(address)
    return _verdict(readable, reasons, "skopeo")


def _umoci(entries: list[Entry]) -> tuple[bool, str]:
    names = _unique_names(entries)
    readable = []
    reasons = []
    for entry in entries:
        problem = _oci_image_problem(entry, "umoci")
        if entry.ref_name not in names:
            problem = (
                problem or "has no unique ref name, which umoci needs to address it"
            )
        if problem:
            reasons.append(f"{entry.ref.path} {problem}")
        else:
            readable.append(entry.ref_name)
    return _verdict(readable, reasons, "umoci")


def _oci_image_problem(entry: Entry, consumer: str) -> str | None:
    if entry.ref.media_type not in OCI_ENTRY_TYPES:
        return f"is {entry.ref.media_type}; {consumer} reads only OCI media types in index.json"
    if entry.target is None:
        return "could not be checked"
    if entry.target.kind == "index" and _host_child(entry.target) is None:
        host = host_platform()
        return (
            f"is an index with no image for this host ({host.os}/{host.architecture})"
        )
    if not _image(entry.target):
        return "is an artifact, not a container image"
    return None


def _host_child(index: Target) -> Target | None:
    host = host_platform()
    for platform, child in zip(index.platforms, index.children):
        if (
            platform.get("os") == host.os
            and platform.get("architecture") == host.architecture
        ):
            return child if child.kind == "manifest" else _host_child(child)
    return None


def _image(target: Target) -> bool:
    if target.kind == "index":
        child = _host_child(target)
        return child is not None and child.platform_specific
    return target.platform_specific


def _unique_names(entries: list[Entry]) -> set[str]:
    counts = Counter(e.ref_name for e in entries if e.ref_name is not None)
    return {name for name, count in counts.items() if count == 1}


def _verdict(
    readable: list[str], reasons: list[str], consumer: str
) -> tuple[bool, str]:
    if readable:
        return True, "readable: " + ", ".join(readable)
    if not reasons:
        return False, f"index.json lists no image for {consumer} to read"
    return False, "; ".join(reasons)
