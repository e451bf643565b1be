"""Image sources the emulator can push: OCI layouts, oci-archive and docker-archive.

A source spec names a path and optionally a reference after the last ``:``:

- ``DIR`` or ``DIR:REF``: an OCI image layout directory. ``REF`` selects the
  ``index.json`` entry whose ``org.opencontainers.image.ref.name`` equals it.
- ``FILE`` or ``FILE:REF``: a tar file holding an OCI layout (oci-archive) or
  the output of ``docker save`` (docker-archive). For a docker-archive,
  ``REF`` selects the entry listing it in ``RepoTags``.

A transport prefix (``oci:``, ``oci-archive:``, ``docker-archive:``) as in
skopeo is accepted and forces the format.

Every blob handed out is verified against its descriptor. ``read_bytes``
checks before returning. ``open_blob`` returns a reader that raises
DigestMismatchError or SizeMismatchError at the end of the stream, so a
consumer that writes through a temporary file never keeps bad content.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ocilayout import mediatypes
from ocilayout.digest import Digest, parse_digest
from ocilayout.errors import (
    AmbiguousError,
    DigestMismatchError,
    InvalidContentError,
    NotFoundError,
    SizeMismatchError,
    UsageError,
)

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
TRANSPORTS = ("oci", "oci-archive", "docker-archive")
# Manifests, indexes and configs are read whole; anything larger is rejected.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor as read from an index or manifest."""

    media_type: str
    digest: Digest
    size: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, value: object, where: str) -> "Descriptor":
        """Parse a descriptor object, naming ``where`` in any error."""
        if not isinstance(value, dict):
            raise InvalidContentError(f"invalid descriptor in {where}: not an object")
        media_type = value.get("mediaType")
        size = value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidContentError(f"descriptor in {where} has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidContentError(
                f"descriptor in {where} has invalid size {size!r}"
            )
        try:
            digest = parse_digest(value.get("digest"), f"descriptor digest in {where}")
        except UsageError as exc:
            raise InvalidContentError(str(exc)) from exc
        return cls(media_type, digest, size, dict(value))

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.raw.get("annotations") or {})

    @property
    def platform(self) -> dict[str, Any] | None:
        return self.raw.get("platform")


class VerifyingReader(io.RawIOBase):
    """A read-only stream that checks digest and size when it reaches the end."""

    def __init__(self, raw: BinaryIO, descriptor: Descriptor, where: str):
        self._raw = raw
        self._descriptor = descriptor
        self._where = where
        self._hasher = descriptor.digest.hasher()
        self._count = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._raw.read(len(buffer))
        if not chunk:
            self._check()
            return 0
        self._count += len(chunk)
        if self._count > self._descriptor.size:
            self._raise_size()
        self._hasher.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _check(self) -> None:
        if self._checked:
            return
        if self._count != self._descriptor.size:
            self._raise_size()
        actual = f"{self._descriptor.digest.algorithm}:{self._hasher.hexdigest()}"
        if actual != str(self._descriptor.digest):
            raise DigestMismatchError(str(self._descriptor.digest), actual, self._where)
        self._checked = True

    def _raise_size(self) -> None:
        # Count what is left so the error reports the real size.
        while chunk := self._raw.read(_CHUNK):
            self._count += len(chunk)
        raise SizeMismatchError(
            str(self._descriptor.digest),
            self._descriptor.size,
            self._count,
            self._where,
        )


class ImageSource:
    """Content of one image (manifest or index) selected from a source.

    ``root`` is the descriptor of the selected manifest or index. Subclasses
    provide ``_open_raw`` and ``_has``; content is addressed by digest only.
    Use a source as a context manager, because some hold temporary files.
    """

    root: Descriptor
    name: str

    def has_blob(self, digest: Digest) -> bool:
        return self._has(digest)

    def open_blob(self, descriptor: Descriptor) -> BinaryIO:
        """Open a blob as a stream that is verified when read to the end."""
        if not self._has(descriptor.digest):
            raise NotFoundError(
                f"blob {descriptor.digest} not found in source {self.name}"
            )
        where = self._where(descriptor.digest)
        return io.BufferedReader(
            VerifyingReader(self._open_raw(descriptor.digest), descriptor, where),
            buffer_size=_CHUNK,
        )

    def read_bytes(self, descriptor: Descriptor) -> bytes:
        """Read a small blob whole and verify it before returning it."""
        if descriptor.size > MAX_DOCUMENT_BYTES:
            raise InvalidContentError(
                f"{descriptor.media_type} {descriptor.digest} in {self.name} is "
                f"{descriptor.size} bytes, above the {MAX_DOCUMENT_BYTES} byte limit"
            )
        with self.open_blob(descriptor) as stream:
            return stream.read()

    def read_json(self, descriptor: Descriptor) -> tuple[bytes, dict[str, Any]]:
        body = self.read_bytes(descriptor)
        return body, parse_json_document(body, self._where(descriptor.digest))

    def close(self) -> None:
        pass

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _where(self, digest: Digest) -> str:
        return f"{self.name}!blobs/{digest.algorithm}/{digest.hex}"

    def _has(self, digest: Digest) -> bool:
        raise NotImplementedError

    def _open_raw(self, digest: Digest) -> BinaryIO:
        raise NotImplementedError


def parse_json_document(body: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidContentError(f"invalid JSON in {where}: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidContentError(f"invalid JSON in {where}: expected an object")
    return document


# OCI layouts


class LayoutDirectorySource(ImageSource):
    """An OCI image layout directory on disk."""

    def __init__(self, path: Path, ref: str | None):
        self.path = path
        self.name = str(path)
        index = _read_layout_index((path / "index.json").read_bytes, self.name)
        self.root = select_index_entry(index, ref, self.name)

    def _blob_path(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.hex

    def _where(self, digest: Digest) -> str:
        return str(self._blob_path(digest))

    def _has(self, digest: Digest) -> bool:
        return self._blob_path(digest).is_file()

    def _open_raw(self, digest: Digest) -> BinaryIO:
        return open(self._blob_path(digest), "rb")


class OciArchiveSource(ImageSource):
    """A tar file holding an OCI image layout, as ``skopeo copy`` writes it."""

    def __init__(self, path: Path, ref: str | None):
        self.path = path
        self.name = str(path)
        self._tar = tarfile.open(path, "r:*")
        try:
            self._members = _index_members(self._tar)
            if "oci-layout" not in self._members:
                raise InvalidContentError(
                    f"{path} is not an oci-archive: it has no oci-layout file"
                )
            index = _read_layout_index(lambda: self._member_bytes("index.json"), path)
            self.root = select_index_entry(index, ref, self.name)
        except BaseException:
            self._tar.close()
            raise

    def close(self) -> None:
        self._tar.close()

    def _member_name(self, digest: Digest) -> str:
        return f"blobs/{digest.algorithm}/{digest.hex}"

    def _has(self, digest: Digest) -> bool:
        member = self._members.get(self._member_name(digest))
        return member is not None and (member.isfile() or member.islnk())

    def _open_raw(self, digest: Digest) -> BinaryIO:
        return self._tar.extractfile(self._members[self._member_name(digest)])

    def _member_bytes(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None or not member.isfile():
            raise InvalidContentError(f"{self.path} has no regular file {name}")
        return self._tar.extractfile(member).read()


def _index_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members = {}
    for member in tar.getmembers():
        name = str(PurePosixPath(member.name))
        members[name.removeprefix("./")] = member
    return members


def _read_layout_index(read, name: object) -> dict[str, Any]:
    try:
        body = read()
    except FileNotFoundError as exc:
        raise InvalidContentError(
            f"{name} is not an OCI layout: index.json is missing"
        ) from exc
    return parse_json_document(body, f"{name}/index.json")


def select_index_entry(index: dict[str, Any], ref: str | None, name: str) -> Descriptor:
    """Pick the index.json entry named ``ref``, or the only entry."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise InvalidContentError(f"{name}/index.json lists no manifests")
    descriptors = [
        Descriptor.from_json(entry, f"{name}/index.json") for entry in entries
    ]
    refs = [d.annotations.get(REF_NAME_ANNOTATION) for d in descriptors]

    if ref is not None:
        matches = [d for d, r in zip(descriptors, refs) if r == ref]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(
                f"reference {ref!r} not found in {name}; "
                f"it holds: {_describe_refs(refs)}"
            )
        raise AmbiguousError(
            f"reference {ref!r} names {len(matches)} entries in {name}",
            [str(d.digest) for d in matches],
        )

    if len(descriptors) == 1:
        return descriptors[0]
    raise AmbiguousError(
        f"{name} contains {len(descriptors)} images; select one with {name}:REF, "
        f"where REF is one of: {_describe_refs(refs)}",
        [r or "" for r in refs],
    )


def _describe_refs(refs: list[str | None]) -> str:
    shown = [r if r is not None else "(unnamed)" for r in refs]
    return ", ".join(shown) if shown else "(none)"


# Docker archives


class DockerArchiveSource(ImageSource):
    """A ``docker save`` tar, presented as a Docker v2 schema 2 manifest.

    Layers stored uncompressed in the archive are gzip-compressed with
    mtime 0, as ``docker push`` does, into a temporary folder; gzip layers are
    kept as they are. The config's ``rootfs.diff_ids`` stay unchanged and
    each layer is checked against its diff_id while it is compressed.
    """

    def __init__(self, path: Path, ref: str | None):
        self.path = path
        self.name = str(path)
        self._tar = tarfile.open(path, "r:*")
        self._spool = Path(tempfile.mkdtemp(prefix="emulator-docker-archive-"))
        self._blobs: dict[Digest, Path] = {}
        try:
            self._members = _index_members(self._tar)
            entry = self._select_entry(ref)
            self.root = self._convert(entry)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._tar.close()
        shutil.rmtree(self._spool, ignore_errors=True)

    def _has(self, digest: Digest) -> bool:
        return digest in self._blobs

    def _open_raw(self, digest: Digest) -> BinaryIO:
        return open(self._blobs[digest], "rb")

    def _where(self, digest: Digest) -> str:
        return f"{self.name} (converted {digest})"

    def _member(self, name: str) -> tarfile.TarInfo:
        # Legacy ``docker save`` links repeated layers to their first copy,
        # and tarfile.extractfile follows such links inside the archive.
        member = self._members.get(str(PurePosixPath(name)).removeprefix("./"))
        if member is None or not (member.isfile() or member.issym() or member.islnk()):
            raise InvalidContentError(f"{self.path} has no regular file {name}")
        return member

    def _open_member(self, name: str) -> BinaryIO:
        try:
            return self._tar.extractfile(self._member(name))
        except KeyError as exc:
            raise InvalidContentError(
                f"{self.path}: {name} links to a file missing from the archive"
            ) from exc

    def _select_entry(self, ref: str | None) -> dict[str, Any]:
        with self._open_member("manifest.json") as stream:
            body = stream.read()
        try:
            entries = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidContentError(
                f"invalid manifest.json in {self.path}: {exc}"
            ) from exc
        if not isinstance(entries, list) or not entries:
            raise InvalidContentError(f"manifest.json in {self.path} lists no images")
        tags = [entry.get("RepoTags") or [] for entry in entries]

        if ref is not None:
            matches = [e for e, t in zip(entries, tags) if _names_tag(ref, t)]
            if len(matches) == 1:
                return matches[0]
            all_tags = ", ".join(t for group in tags for t in group) or "(none)"
            raise NotFoundError(
                f"RepoTag {ref!r} names {len(matches)} images in {self.path}; "
                f"it holds: {all_tags}"
            )
        if len(entries) == 1:
            return entries[0]
        raise AmbiguousError(
            f"{self.path} contains {len(entries)} images; select one with FILE:REF, "
            f"where REF is one of its RepoTags",
            [t for group in tags for t in group],
        )

    def _convert(self, entry: dict[str, Any]) -> Descriptor:
        config_name = entry.get("Config")
        layer_names = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise InvalidContentError(
                f"manifest.json in {self.path} lacks Config or Layers"
            )

        config_body = self._read_config(config_name)
        diff_ids = _diff_ids(config_body, f"{self.path}!{config_name}")
        if len(diff_ids) != len(layer_names):
            raise InvalidContentError(
                f"{self.path}: config lists {len(diff_ids)} diff_ids "
                f"but manifest.json lists {len(layer_names)} layers"
            )

        config = self._spool_bytes(config_body, mediatypes.DOCKER_CONFIG)
        layers = [
            self._spool_layer(name, diff_id)
            for name, diff_id in zip(layer_names, diff_ids)
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": config,
            "layers": layers,
        }
        body = json.dumps(manifest, indent=3).encode()
        descriptor = self._spool_bytes(body, mediatypes.DOCKER_MANIFEST)
        return Descriptor.from_json(descriptor, self.name)

    def _read_config(self, name: str) -> bytes:
        with self._open_member(name) as stream:
            body = stream.read()
        # docker save names the config after its own sha256, as <hex>.json or
        # blobs/sha256/<hex>; when it does, the name is checked like a digest.
        stem = PurePosixPath(name).name.removesuffix(".json")
        if re.fullmatch(r"[0-9a-f]{64}", stem):
            actual = hashlib.sha256(body).hexdigest()
            if actual != stem:
                raise DigestMismatchError(
                    f"sha256:{stem}", f"sha256:{actual}", f"{self.path}!{name}"
                )
        return body

    def _spool_bytes(self, body: bytes, media_type: str) -> dict[str, Any]:
        digest = Digest.of_bytes(body)
        target = self._spool / digest.hex
        target.write_bytes(body)
        self._blobs[digest] = target
        return {"mediaType": media_type, "digest": str(digest), "size": len(body)}

    def _spool_layer(self, name: str, diff_id: Digest) -> dict[str, Any]:
        where = f"{self.path}!{name}"
        target = self._spool / f"layer-{len(self._blobs)}"
        with self._open_member(name) as raw, open(target, "wb") as output:
            head = raw.read(2)
            stream = _Rejoined(head, raw)
            if head == b"\x1f\x8b":
                _copy_gzip_layer(stream, output, diff_id, where)
            else:
                _compress_layer(stream, output, diff_id, where)

        digest, size = _hash_file(target)
        self._blobs[digest] = target
        return {
            "mediaType": mediatypes.DOCKER_LAYER_GZIP,
            "digest": str(digest),
            "size": size,
        }


def _names_tag(ref: str, repo_tags: list[str]) -> bool:
    """Tell whether ``ref`` names one of ``repo_tags``, short names included.

    Docker and skopeo store fully qualified names (``docker.io/library/x:1``)
    in RepoTags, while users write the short form (``x:1``).
    """
    candidates = {ref, f"docker.io/{ref}", f"docker.io/library/{ref}"}
    return any(tag in candidates for tag in repo_tags)


class _Rejoined(io.RawIOBase):
    """A stream that yields ``head`` and then the rest of ``tail``."""

    def __init__(self, head: bytes, tail: BinaryIO):
        self._head = head
        self._tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        chunk = self._tail.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _compress_layer(
    stream: BinaryIO, output: BinaryIO, diff_id: Digest, where: str
) -> None:
    hasher = diff_id.hasher()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=output, mtime=0, compresslevel=6
    ) as compressed:
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
            compressed.write(chunk)
    _check_diff_id(diff_id, hasher.hexdigest(), where)


def _copy_gzip_layer(
    stream: BinaryIO, output: BinaryIO, diff_id: Digest, where: str
) -> None:
    hasher = diff_id.hasher()
    with gzip.GzipFile(fileobj=_Tee(stream, output), mode="rb") as plain:
        while chunk := plain.read(_CHUNK):
            hasher.update(chunk)
    _check_diff_id(diff_id, hasher.hexdigest(), where)


class _Tee(io.RawIOBase):
    """A stream that copies everything read from ``source`` into ``sink``."""

    def __init__(self, source: BinaryIO, sink: BinaryIO):
        self._source = source
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._source.read(len(buffer))
        self._sink.write(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _check_diff_id(diff_id: Digest, actual_hex: str, where: str) -> None:
    actual = f"{diff_id.algorithm}:{actual_hex}"
    if actual != str(diff_id):
        raise DigestMismatchError(str(diff_id), actual, f"{where} (uncompressed)")


def _diff_ids(config_body: bytes, where: str) -> list[Digest]:
    config = parse_json_document(config_body, where)
    rootfs = config.get("rootfs")
    values = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(values, list):
        raise InvalidContentError(f"config {where} has no rootfs.diff_ids list")
    try:
        return [parse_digest(value, f"diff_id in {where}") for value in values]
    except UsageError as exc:
        raise InvalidContentError(str(exc)) from exc


def _hash_file(path: Path) -> tuple[Digest, int]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return Digest("sha256", hasher.hexdigest()), size


# Spec parsing


def open_source(spec: str | os.PathLike[str]) -> ImageSource:
    """Open the image named by ``spec`` (see the module docstring)."""
    transport, path, ref = parse_source_spec(spec)
    if transport is None:
        transport = _detect_transport(path)
    if transport == "oci":
        return LayoutDirectorySource(path, ref)
    if transport == "oci-archive":
        return OciArchiveSource(path, ref)
    return DockerArchiveSource(path, ref)


def parse_source_spec(
    spec: str | os.PathLike[str],
) -> tuple[str | None, Path, str | None]:
    """Split a spec into (transport or None, existing path, ref or None)."""
    text = os.fspath(spec)
    transport = None
    prefix, sep, rest = text.partition(":")
    if sep and prefix in TRANSPORTS:
        transport, text = prefix, rest
    if not text:
        raise UsageError(f"invalid source {os.fspath(spec)!r}: no path given")

    if os.path.exists(text):
        return transport, Path(text), None
    # The reference may contain ':' itself (a RepoTag such as app:latest), so
    # the path is the longest prefix before a ':' that exists.
    colons = [i for i, character in enumerate(text) if character == ":"]
    for position in reversed(colons):
        path_text, ref = text[:position], text[position + 1 :]
        if path_text and os.path.exists(path_text):
            if not ref:
                raise UsageError(f"invalid source {text!r}: empty reference after ':'")
            return transport, Path(path_text), ref
    raise NotFoundError(
        f"source {os.fspath(spec)!r} not found: expected an OCI layout directory "
        f"or an oci-archive/docker-archive tar file, optionally followed by :REF"
    )


def _detect_transport(path: Path) -> str:
    if path.is_dir():
        return "oci"
    if not tarfile.is_tarfile(path):
        raise UsageError(
            f"source {path} is neither a directory nor a tar file; expected an "
            f"OCI layout, an oci-archive or a docker-archive"
        )
    with tarfile.open(path, "r:*") as tar:
        names = set(_index_members(tar))
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise UsageError(
        f"tar file {path} contains neither oci-layout nor manifest.json, so it is "
        f"not an oci-archive or docker-archive"
    )
