"""Deep layer checks: decompress each layer and compare its diff_id.

gzip uses the standard library; zstd needs the ``zstandard`` package, which
is imported only when a zstd layer is met. The compression is detected from
the content's first bytes, so a layer labelled gzip that is really a plain
tar is reported by name and its diff_id is still checked.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import BinaryIO

from .. import mediatypes as mt
from .fields import Findings, Ref
from .jsonfile import child_path

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_TAR_BLOCK = 512


def sniff_compression(head: bytes) -> str | None:
    """Return ``gzip``, ``zstd`` or ``tar`` for a layer's first bytes, else None."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if is_tar_block(head[:_TAR_BLOCK]):
        return "tar"
    return None


def is_tar_block(block: bytes) -> bool:
    """Tell whether ``block`` is a tar header with a valid checksum, or all zeros.

    An all-zero block is how an empty archive starts.
    """
    if len(block) < _TAR_BLOCK:
        return False
    if block == bytes(_TAR_BLOCK):
        return True
    field = block[148:156].replace(b"\x00", b" ").strip()
    try:
        recorded = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return recorded in (unsigned, signed)


class _PeekStream:
    """A read-only stream that replays bytes already read from its head."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)

    def readable(self) -> bool:
        return True


def check_layer(
    findings: Findings,
    stream: BinaryIO,
    layer: Ref,
    diff_id: str,
    config_file: str,
    diff_id_path: str,
) -> None:
    """Decompress one layer blob and compare it with its config diff_id."""
    head = stream.read(_TAR_BLOCK)
    actual = _check_label(findings, layer, head)
    algorithm = diff_id.split(":", 1)[0]
    if actual is None or algorithm not in ("sha256", "sha512"):
        return

    result = _hash_uncompressed(_PeekStream(head, stream), actual, algorithm)
    if isinstance(result, _Skipped):
        where = child_path(layer.path, "mediaType")
        findings.warning(layer.file, where, "deep-check-unavailable", result.reason)
        return
    if isinstance(result, _Failed):
        findings.error(
            layer.file,
            child_path(layer.path, "digest"),
            "layer-corrupt",
            f"layer {layer.digest} cannot be decompressed as {actual}: {result.reason}",
        )
        return

    hexdigest, first_block = result
    if actual != "tar" and not is_tar_block(first_block):
        findings.error(
            layer.file,
            child_path(layer.path, "digest"),
            "layer-not-tar",
            f"layer {layer.digest} decompresses to data that is not a tar archive",
        )
    if f"{algorithm}:{hexdigest}" != diff_id:
        findings.error(
            config_file,
            diff_id_path,
            "diff-id-mismatch",
            f"layer {layer.digest} uncompressed hashes to {algorithm}:{hexdigest}, "
            f"not the config's diff_id {diff_id}",
        )


def _check_label(findings: Findings, layer: Ref, head: bytes) -> str | None:
    """Compare the media type's compression with the content's first bytes.

    Returns the compression found, or None when the layer cannot be read as
    any of them or its media type names no known compression.
    """
    declared = mt.compression_of(layer.media_type)
    if declared is None:
        return None
    actual = sniff_compression(head)
    if actual is None:
        findings.error(
            layer.file,
            child_path(layer.path, "digest"),
            "layer-corrupt",
            f"layer {layer.digest} is neither gzip, zstd nor tar, though its media "
            f"type {layer.media_type!r} says {declared}",
        )
    elif actual != declared:
        findings.error(
            layer.file,
            child_path(layer.path, "mediaType"),
            "layer-compression-mislabeled",
            f"layer {layer.digest} is labelled {declared} ({layer.media_type}) but "
            f"its content is {_describe(actual)}",
        )
    return actual


def _describe(compression: str) -> str:
    return (
        "a plain tar archive" if compression == "tar" else f"{compression}-compressed"
    )


class _Skipped:
    def __init__(self, reason: str):
        self.reason = reason


class _Failed:
    def __init__(self, reason: str):
        self.reason = reason


def _hash_uncompressed(stream, compression: str, algorithm: str):
    """Return ``(hexdigest, first 512 bytes)`` of the uncompressed stream.

    Returns _Skipped when zstandard is not installed, and _Failed when the
    data cannot be decompressed.
    """
    try:
        reader, errors = _open_decompressed(stream, compression)
    except ImportError:
        return _Skipped(
            "zstd layers need the zstandard package for a deep check; install "
            "it with pip install zstandard"
        )

    hasher = hashlib.new(algorithm)
    first = b""
    try:
        while chunk := reader.read(_CHUNK):
            if len(first) < _TAR_BLOCK:
                first += chunk[: _TAR_BLOCK - len(first)]
            hasher.update(chunk)
    except errors as exc:
        return _Failed(str(exc) or type(exc).__name__)
    return hasher.hexdigest(), first


def _open_decompressed(stream, compression: str):
    """Return a reader of uncompressed bytes and the errors its reads raise."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb"), errors
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(
            stream, read_across_frames=True
        )
        return reader, errors + (zstandard.ZstdError,)
    return stream, errors
