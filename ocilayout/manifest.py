"""Strict parsing of manifest, index and config bodies read from the store.

Bodies come from a service that accepts pushes from anyone with push rights,
so parsing bounds the size, rejects duplicate keys and deep nesting, and
checks every field ocilayout relies on before anything else reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from . import mediatypes as mt
from .digest import Digest, parse_digest
from .errors import InvalidContentError, OCILayoutError

# Largest manifest, index or config body read; registries commonly cap
# manifests at 4 MiB.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        if self.variant:
            text += f"/{self.variant}"
        if self.os_version:
            text += f" ({self.os_version})"
        return text

    def to_json(self) -> dict:
        out: dict = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Manifest:
    """A parsed image manifest (OCI or Docker v2 schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None


@dataclass(frozen=True)
class Index:
    """A parsed image index (OCI index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def load_json(data: bytes, where: str) -> dict:
    """Decode a JSON object from ``data`` or raise InvalidContentError."""
    if len(data) > MAX_BODY_BYTES:
        raise InvalidContentError(
            f"{where} is {len(data)} bytes, larger than the {MAX_BODY_BYTES} "
            "byte limit for JSON bodies"
        )
    try:
        # JSON exchanged between systems is UTF-8 (RFC 8259); json.loads
        # would also take UTF-16 and UTF-32, which Go readers reject.
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidContentError(f"{where} is not UTF-8 JSON: {exc}") from None
    _check_depth(data, where)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except _DuplicateKey as exc:
        raise InvalidContentError(f"{where} has duplicate JSON key {exc}") from None
    except ValueError as exc:
        raise InvalidContentError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidContentError(
            f"{where} is JSON {type(value).__name__}, expected an object"
        )
    return value


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(repr(key))
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


# One token of a JSON body for the depth check: a complete string with its
# escapes, a quote that opens a string never closed, or a bracket. Scanning
# left to right, each string start is tried once, so the scan stays linear.
# The quantifiers are possessive, so a match never backtracks.
_DEPTH_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|["\[\]{}]', re.DOTALL)


def _check_depth(data: bytes, where: str) -> None:
    # Counting brackets outside strings bounds nesting before json.loads
    # recurses, so a hostile body cannot exhaust the interpreter stack.
    depth = 0
    for token in _DEPTH_TOKEN.finditer(data):
        byte = data[token.start()]
        if byte == 0x22:
            if token.end() - token.start() == 1:
                break  # the rest is inside a string that never ends
            continue
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InvalidContentError(
                    f"{where} nests JSON deeper than {MAX_JSON_DEPTH} levels"
                )
        else:
            depth -= 1


def sniff_media_type(body: dict, where: str) -> str:
    """Return the body's own media type, inferred from its fields if absent."""
    declared = body.get("mediaType")
    if "mediaType" in body and not mt.is_valid_media_type(declared):
        raise InvalidContentError(f"{where} has an invalid mediaType {declared!r}")
    if body.get("schemaVersion") == 1 or declared in mt.SCHEMA1_TYPES:
        return mt.DOCKER_SCHEMA1
    if declared:
        return declared
    if "manifests" in body:
        return mt.OCI_INDEX
    if "config" in body or "layers" in body:
        return mt.OCI_MANIFEST
    raise InvalidContentError(
        f"{where} has no mediaType and neither 'manifests' nor 'config'"
    )


def parse_descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidContentError(f"{where} is not a JSON object")
    media_type = value.get("mediaType")
    if not mt.is_valid_media_type(media_type):
        raise InvalidContentError(f"{where}.mediaType {media_type!r} is invalid")
    try:
        digest = parse_digest(value.get("digest"), f"{where}.digest")
    except OCILayoutError as exc:
        raise InvalidContentError(str(exc)) from None
    size = value.get("size")
    if type(size) is not int or size < 0:
        raise InvalidContentError(
            f"{where}.size {size!r} is invalid: expected a non-negative integer"
        )
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=_parse_platform(value.get("platform"), f"{where}.platform"),
        annotations=_string_map(value.get("annotations"), f"{where}.annotations"),
        artifact_type=_optional_str(value.get("artifactType"), where),
        urls=_parse_urls(value.get("urls"), f"{where}.urls"),
        raw=value,
    )


def parse_manifest(body: dict, media_type: str, where: str) -> Manifest:
    if "manifests" in body:
        raise InvalidContentError(
            f"{where} is an image manifest but carries 'manifests'"
        )
    _check_schema_version(body, where)
    if "config" not in body:
        raise InvalidContentError(f"{where} has no config descriptor")
    layers = body.get("layers", [])
    if not isinstance(layers, list):
        raise InvalidContentError(f"{where}.layers is not an array")
    subject = body.get("subject")
    return Manifest(
        media_type=media_type,
        config=parse_descriptor(body["config"], f"{where}.config"),
        layers=tuple(
            parse_descriptor(layer, f"{where}.layers[{i}]")
            for i, layer in enumerate(layers)
        ),
        subject=parse_descriptor(subject, f"{where}.subject") if subject else None,
        artifact_type=_optional_str(body.get("artifactType"), where),
    )


def parse_index(body: dict, media_type: str, where: str) -> Index:
    for key in ("config", "layers"):
        if key in body:
            raise InvalidContentError(f"{where} is an image index but carries {key!r}")
    _check_schema_version(body, where)
    manifests = body.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidContentError(f"{where}.manifests is missing or not an array")
    return Index(
        media_type=media_type,
        manifests=tuple(
            parse_descriptor(child, f"{where}.manifests[{i}]")
            for i, child in enumerate(manifests)
        ),
    )


def platform_from_config(config: dict) -> Platform | None:
    """Return the platform an image config declares, or None if incomplete."""
    os_name = config.get("os")
    architecture = config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        return None
    if not os_name or not architecture:
        return None
    variant = config.get("variant")
    os_version = config.get("os.version")
    features = config.get("os.features")
    return Platform(
        os=os_name,
        architecture=architecture,
        variant=variant if isinstance(variant, str) and variant else None,
        os_version=os_version if isinstance(os_version, str) and os_version else None,
        os_features=tuple(f for f in features if isinstance(f, str))
        if isinstance(features, list)
        else (),
    )


def _check_schema_version(body: dict, where: str) -> None:
    version = body.get("schemaVersion")
    if version != 2 or type(version) is not int:
        raise InvalidContentError(
            f"{where} has schemaVersion {version!r}, expected 2"
        )


def _parse_platform(value: object, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidContentError(f"{where} is not a JSON object")
    strings = {}
    for key in ("os", "architecture", "variant", "os.version"):
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise InvalidContentError(f"{where}.{key} {item!r} is not a string")
        strings[key] = item or None
    if not strings["os"] or not strings["architecture"]:
        raise InvalidContentError(f"{where} needs both 'os' and 'architecture'")
    features = value.get("os.features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InvalidContentError(f"{where}.os.features is not an array of strings")
    return Platform(
        os=strings["os"],
        architecture=strings["architecture"],
        variant=strings["variant"],
        os_version=strings["os.version"],
        os_features=tuple(features),
    )


def _string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, str) for v in value.values()
    ):
        raise InvalidContentError(f"{where} is not a map of strings")
    return dict(value)


def _optional_str(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not mt.is_valid_media_type(value):
        raise InvalidContentError(f"{where}.artifactType {value!r} is invalid")
    return value


def _parse_urls(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise InvalidContentError(f"{where} is not an array of strings")
    return tuple(value)
