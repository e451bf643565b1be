"""Grammar checks for descriptor fields, platforms and annotations.

These rules come from OCI image-spec 1.1 (descriptor.md, image-index.md,
annotations.md) and are written here independently of the builder, so a
layout the builder writes is judged by a second reading of the spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import mediatypes as mt
from .jsonfile import child_path
from .report import ERROR, WARNING, Problem

REF_NAME_KEY = "org.opencontainers.image.ref.name"
MAX_SIZE = 2**63 - 1

_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_ALGORITHM = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*$")
_ENCODED = re.compile(r"^[a-zA-Z0-9=_-]+$")
_LOWER_HEX = re.compile(r"^[a-f0-9]+$")

# Registered algorithms with the length of their hex encoding. blake3 is
# registered but hashlib lacks it, so its blobs get grammar, presence and
# size checks only.
HEX_LENGTHS = {"sha256": 64, "sha512": 128, "blake3": 64}
VERIFIABLE = frozenset({"sha256", "sha512"})

_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")

# RFC 6838 section 4.2 restricted-name: 1 to 127 characters, first alphanumeric.
_RESTRICTED = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"^{_RESTRICTED}/{_RESTRICTED}$")


class Findings:
    """The problems collected during one check, in the order found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, file: str, path: str | None, code: str, message: str) -> None:
        self.problems.append(Problem(ERROR, file, path, code, message))

    def warning(self, file: str, path: str | None, code: str, message: str) -> None:
        self.problems.append(Problem(WARNING, file, path, code, message))


@dataclass
class Ref:
    """A descriptor as far as its fields are valid; an invalid field is None."""

    file: str
    path: str
    media_type: str | None = None
    algorithm: str | None = None
    encoded: str | None = None
    size: int | None = None
    data: bytes | None = None
    urls: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict | None = None
    has_platform: bool = False

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def key(self) -> tuple[str, str] | None:
        if self.algorithm is None:
            return None
        return (self.algorithm, self.encoded)

    @property
    def blob_file(self) -> str:
        return f"blobs/{self.algorithm}/{self.encoded}"

    @property
    def verifiable(self) -> bool:
        return self.algorithm in VERIFIABLE


def short(value: object, limit: int = 80) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_media_type(value: object) -> bool:
    return isinstance(value, str) and bool(_MEDIA_TYPE.fullmatch(value))


def is_ref_name(value: object) -> bool:
    return isinstance(value, str) and bool(_REF_NAME.fullmatch(value))


def is_blob_name(algorithm: str, encoded: str) -> bool:
    """Tell whether ``blobs/<algorithm>/<encoded>`` is a valid blob file name."""
    if not _ALGORITHM.fullmatch(algorithm) or not _ENCODED.fullmatch(encoded):
        return False
    length = HEX_LENGTHS.get(algorithm)
    if length is None:
        return True
    return len(encoded) == length and bool(_LOWER_HEX.fullmatch(encoded))


def is_algorithm_name(name: str) -> bool:
    return bool(_ALGORITHM.fullmatch(name))


def digest_problem(value: object) -> str | None:
    """Explain why ``value`` is not a valid digest string, or return None."""
    if not isinstance(value, str):
        return f"digest {short(value)} is not a string"
    if not _DIGEST.fullmatch(value):
        return (
            f"digest {short(value)} does not match algorithm:encoded, "
            "for example sha256:<64 lowercase hex characters>"
        )
    algorithm, encoded = value.split(":", 1)
    length = HEX_LENGTHS.get(algorithm)
    if length is not None and (len(encoded) != length or not _LOWER_HEX.fullmatch(encoded)):
        return (
            f"digest {short(value)} is invalid: {algorithm} needs exactly "
            f"{length} lowercase hex characters"
        )
    return None


def check_descriptor(
    findings: Findings, value: object, file: str, path: str
) -> Ref | None:
    """Check one descriptor object's fields and return what could be read.

    Returns None when ``value`` is not a JSON object at all. Presence and
    content of the blob are checked by the caller.
    """
    if not isinstance(value, dict):
        findings.error(
            file, path, "field-invalid", f"descriptor is {short(value)}, not an object"
        )
        return None
    ref = Ref(file, path)

    ref.media_type = _check_media_type(findings, value, file, path)
    _check_digest(findings, value, ref)
    _check_size(findings, value, ref)
    _check_urls(findings, value, ref)
    ref.annotations = check_annotations(findings, value, file, path)
    _check_artifact_type(findings, value, file, path)
    _check_data(findings, value, ref)
    _check_empty_descriptor(findings, ref)

    if "platform" in value:
        ref.has_platform = True
        ref.platform = check_platform(
            findings, value["platform"], file, child_path(path, "platform")
        )
    return ref


def _check_media_type(
    findings: Findings, value: dict, file: str, path: str
) -> str | None:
    where = child_path(path, "mediaType")
    if "mediaType" not in value:
        findings.error(
            file, path, "field-missing", "descriptor has no mediaType; it is required"
        )
        return None
    media_type = value["mediaType"]
    if not is_media_type(media_type):
        findings.error(
            file,
            where,
            "media-type-invalid",
            f"mediaType {short(media_type)} is not an RFC 6838 type/subtype",
        )
        return None
    return media_type


def _check_digest(findings: Findings, value: dict, ref: Ref) -> None:
    where = child_path(ref.path, "digest")
    if "digest" not in value:
        findings.error(
            ref.file,
            ref.path,
            "field-missing",
            "descriptor has no digest; it is required",
        )
        return
    digest = value["digest"]
    problem = digest_problem(digest)
    if problem:
        findings.error(ref.file, where, "digest-invalid", problem)
        return
    ref.algorithm, ref.encoded = digest.split(":", 1)
    if not ref.verifiable:
        findings.warning(
            ref.file,
            where,
            "digest-algorithm-unsupported",
            f"digest {short(digest)} uses {ref.algorithm}, which this checker cannot "
            "compute, so the content is not verified",
        )


def _check_size(findings: Findings, value: dict, ref: Ref) -> None:
    where = child_path(ref.path, "size")
    if "size" not in value:
        findings.error(
            ref.file,
            ref.path,
            "field-missing",
            "descriptor has no size; it is required",
        )
        return
    size = value["size"]
    valid = (
        isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_SIZE
    )
    if not valid:
        findings.error(
            ref.file,
            where,
            "size-invalid",
            f"size {short(size)} is not an integer from 0 to 2^63-1",
        )
        return
    ref.size = size


def _check_urls(findings: Findings, value: dict, ref: Ref) -> None:
    if "urls" not in value:
        return
    where = child_path(ref.path, "urls")
    urls = value["urls"]
    if not isinstance(urls, list):
        findings.error(
            ref.file,
            where,
            "field-invalid",
            f"urls is {short(urls)}, not an array of strings",
        )
        return
    for i, url in enumerate(urls):
        if (
            not isinstance(url, str)
            or not urlsplit(url).scheme
            or any(c.isspace() for c in url)
        ):
            findings.error(
                ref.file,
                child_path(where, i),
                "field-invalid",
                f"url {short(url)} is not an absolute RFC 3986 URI",
            )
            continue
        ref.urls.append(url)


def check_annotations(
    findings: Findings, value: dict, file: str, path: str
) -> dict[str, str]:
    """Check that ``value["annotations"]``, if present, maps strings to strings."""
    if "annotations" not in value:
        return {}
    where = child_path(path, "annotations")
    annotations = value["annotations"]
    if not isinstance(annotations, dict):
        findings.error(
            file,
            where,
            "field-invalid",
            f"annotations is {short(annotations)}, not an object of strings",
        )
        return {}
    valid = {}
    for key, item in annotations.items():
        if not isinstance(item, str):
            findings.error(
                file,
                child_path(where, key),
                "field-invalid",
                f"annotation {short(key)} has value {short(item)}; values must be strings",
            )
            continue
        valid[key] = item
    return valid


def _check_artifact_type(findings: Findings, value: dict, file: str, path: str) -> None:
    if "artifactType" in value and not is_media_type(value["artifactType"]):
        findings.error(
            file,
            child_path(path, "artifactType"),
            "media-type-invalid",
            f"artifactType {short(value['artifactType'])} is not an RFC 6838 type/subtype",
        )


def check_artifact_type(findings: Findings, value: dict, file: str, path: str) -> None:
    """Check a manifest's or index's own ``artifactType`` grammar."""
    _check_artifact_type(findings, value, file, path)


def _check_data(findings: Findings, value: dict, ref: Ref) -> None:
    if "data" not in value:
        return
    where = child_path(ref.path, "data")
    data = value["data"]
    if not isinstance(data, str):
        findings.error(
            ref.file, where, "data-invalid", f"data is {short(data, 40)}, not a string"
        )
        return
    try:
        decoded = base64.b64decode(data.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        findings.error(
            ref.file,
            where,
            "data-invalid",
            f"data {short(data, 40)} is not standard base64 (RFC 4648 section 4): "
            f"{exc}",
        )
        return
    ref.data = decoded

    if ref.size is not None and len(decoded) != ref.size:
        findings.error(
            ref.file,
            where,
            "data-mismatch",
            f"data decodes to {len(decoded)} bytes but size is {ref.size}",
        )
    if ref.verifiable:
        actual = hashlib.new(ref.algorithm, decoded).hexdigest()
        if actual != ref.encoded:
            findings.error(
                ref.file,
                where,
                "data-mismatch",
                f"data hashes to {ref.algorithm}:{actual}, not the descriptor's {ref.digest}",
            )


def _check_empty_descriptor(findings: Findings, ref: Ref) -> None:
    if ref.media_type != mt.OCI_EMPTY:
        return
    if ref.algorithm is not None and ref.digest != mt.EMPTY_DIGEST:
        findings.error(
            ref.file,
            child_path(ref.path, "digest"),
            "empty-descriptor-invalid",
            f"an {mt.OCI_EMPTY} descriptor must have digest {mt.EMPTY_DIGEST}, "
            f"the digest of '{{}}', not {ref.digest}",
        )
    if ref.size is not None and ref.size != 2:
        findings.error(
            ref.file,
            child_path(ref.path, "size"),
            "empty-descriptor-invalid",
            f"an {mt.OCI_EMPTY} descriptor must have size 2, not {ref.size}",
        )


def check_platform(
    findings: Findings, value: object, file: str, path: str
) -> dict | None:
    """Check a ``platform`` object; return it when valid, else None."""
    if not isinstance(value, dict):
        findings.error(
            file, path, "platform-invalid", f"platform is {short(value)}, not an object"
        )
        return None
    valid = True

    for name in ("architecture", "os"):
        if not isinstance(value.get(name), str) or not value[name]:
            shown_value = short(value[name]) if name in value else "missing"
            findings.error(
                file,
                child_path(path, name),
                "platform-invalid",
                f"platform {name} is {shown_value}; a non-empty string is required",
            )
            valid = False
    for name in ("variant", "os.version"):
        if name in value and not isinstance(value[name], str):
            findings.error(
                file,
                child_path(path, name),
                "platform-invalid",
                f"platform {name} is {short(value[name])}, not a string",
            )
            valid = False
    for name in ("os.features", "features"):
        items = value.get(name, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            findings.error(
                file,
                child_path(path, name),
                "platform-invalid",
                f"platform {name} is {short(items)}, not an array of strings",
            )
            valid = False
    return value if valid else None
