"""Deep layer verification: decompress each layer and check its diff_id.

A layer's digest covers its compressed bytes; the image config's
``rootfs.diff_ids`` name the digest of each uncompressed tar, which is what a
scanner unpacks. Deep verification streams every layer through its
decompressor (gzip via zlib, zstd via the optional ``zstandard`` package,
imported only when a zstd layer appears, or none for a plain tar) and
compares the result with the config.

The compression is taken from the layer's magic bytes, not from its media
type, because stores contain layers whose media type is wrong while their
content is intact (skopeo can write gzip-labelled plain tars). Such a layer
is reported by name in ``LayerCheck.warning``, or raised as
MislabeledCompressionError when ``strict_media_types`` is set.

Memory stays flat: input is read and output produced in blocks of
``CHUNK_BYTES``, whatever the layer size.

    IntegrityError
    ├── DiffIDMismatchError: a layer does not decompress to its diff_id
    ├── MislabeledCompressionError: magic bytes contradict the media type
    └── CorruptLayerError: a compressed stream is truncated or invalid
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import mediatypes as mt
from .digest import Digest, parse_digest
from .errors import (
    DigestMismatchError,
    IntegrityError,
    InvalidContentError,
    OCILayoutError,
    SizeMismatchError,
    UsageError,
)
from .manifest import (
    MAX_BODY_BYTES,
    Descriptor,
    load_json,
    parse_descriptor,
    parse_manifest,
    sniff_media_type,
)

CHUNK_BYTES = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# POSIX and GNU tar headers carry "ustar" at offset 257.
TAR_MAGIC = b"ustar"
TAR_MAGIC_OFFSET = 257

# Maps compressions that are recognised but never valid in an OCI layer to
# their magic bytes; such a layer cannot match its diff_id.
_FOREIGN_MAGIC = {"bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}


class DiffIDMismatchError(IntegrityError):
    """A layer decompresses to a digest other than its config's diff_id."""

    def __init__(self, digest: str, path: str, expected: str, actual: str, index: int):
        super().__init__(
            f"diff_id mismatch for layer {index} ({digest}) at {path}: config "
            f"rootfs.diff_ids expects {expected}, the uncompressed layer is {actual}"
        )
        self.digest = digest
        self.path = path
        self.expected = expected
        self.actual = actual
        self.index = index


class MislabeledCompressionError(IntegrityError):
    """A layer's magic bytes show a compression its media type does not name."""

    def __init__(self, digest: str, path: str, expected: str, actual: str):
        super().__init__(
            f"layer {digest} at {path} is labelled {expected} by its media type "
            f"but its content is {actual}"
        )
        self.digest = digest
        self.path = path
        self.expected = expected
        self.actual = actual


class CorruptLayerError(IntegrityError):
    """A layer's compressed stream cannot be decompressed to its end."""

    def __init__(self, digest: str, path: str, expected: str, actual: str):
        super().__init__(
            f"layer {digest} at {path} is not a valid {expected} stream: {actual}"
        )
        self.digest = digest
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class LayerCheck:
    """The outcome of deep verification for one layer of one image.

    ``declared`` is the compression the media type names (None for a media
    type that names none), ``detected`` the one its magic bytes show. Data
    with no known magic is read uncompressed and reported as ``tar``.
    ``diff_id`` is None for a non-distributable layer absent from the layout,
    which is skipped.
    """

    index: int
    digest: str
    path: str | None
    media_type: str
    declared: str | None
    detected: str | None
    expected_diff_id: str
    diff_id: str | None
    uncompressed_size: int | None

    @property
    def skipped(self) -> bool:
        return self.diff_id is None

    @property
    def mislabeled(self) -> bool:
        return (
            self.declared is not None
            and self.detected is not None
            and self.declared != self.detected
        )

    @property
    def warning(self) -> str | None:
        if not self.mislabeled:
            return None
        return (
            f"layer {self.digest} is labelled {self.media_type} ({self.declared}) "
            f"but its content is {self.detected}; it was verified as {self.detected}"
        )


@dataclass(frozen=True)
class _Measured:
    detected: str
    hex: str
    size: int


LayerInput = tuple["str | os.PathLike[str] | None", "Descriptor | dict"]


def verify_diff_ids(
    layers: Sequence[LayerInput],
    config: dict,
    *,
    strict_media_types: bool = False,
    workers: int | None = None,
) -> list[LayerCheck]:
    """Check each layer against the diff_id at its position in ``config``.

    ``layers`` lists (path, descriptor) in manifest order; a path of None
    marks an absent non-distributable layer, which is skipped. Layers are
    decompressed in parallel threads, largest first. Returns one LayerCheck
    per layer. Raises InvalidContentError when the config's diff_ids do not
    list one entry per layer, and otherwise the error of the first failing
    layer in manifest order: DiffIDMismatchError, CorruptLayerError, or
    MislabeledCompressionError (only with ``strict_media_types``).
    """
    return _Verifier(strict_media_types, workers).verify(layers, config)


def verify_manifests(
    layout: str | os.PathLike[str],
    manifests: Iterable[bytes],
    *,
    strict_media_types: bool = False,
    workers: int | None = None,
) -> list[LayerCheck]:
    """Deep-verify every image manifest among ``manifests`` in ``layout``.

    ``manifests`` are manifest or index bodies whose blobs are already placed
    under ``layout/blobs``. Indexes, and artifacts whose config is not an
    image config, are skipped. A layer shared by several images is
    decompressed once. Raises as ``verify_diff_ids`` does.
    """
    root = Path(layout)
    verifier = _Verifier(strict_media_types, workers)
    checks: list[LayerCheck] = []
    for body in manifests:
        document = load_json(body, "manifest")
        where = f"manifest {Digest.of_bytes(body)}"
        media_type = sniff_media_type(document, where)
        if media_type in mt.INDEX_TYPES or "config" not in document:
            continue
        manifest = parse_manifest(document, media_type, where)
        if manifest.config.media_type not in mt.IMAGE_CONFIG_TYPES:
            continue
        config = _read_config(root, manifest.config)
        layers = [(_blob_path(root, layer), layer) for layer in manifest.layers]
        checks += verifier.verify(layers, config)
    return checks


def verify_layout(
    layout: str | os.PathLike[str], *, strict_media_types: bool = False
) -> list[LayerCheck]:
    """Deep-verify every image reachable from ``layout/index.json``."""
    root = Path(layout)
    index = load_json(_read_small(root / "index.json"), f"{root}/index.json")
    bodies = []
    pending = list(index.get("manifests") or [])
    seen: set[Digest] = set()
    while pending:
        descriptor = parse_descriptor(pending.pop(0), f"{root}/index.json entry")
        if descriptor.digest in seen:
            continue
        seen.add(descriptor.digest)
        body = _read_verified(root, descriptor)
        bodies.append(body)
        if descriptor.media_type in mt.INDEX_TYPES:
            pending += load_json(body, str(descriptor.digest)).get("manifests") or []
    return verify_manifests(root, bodies, strict_media_types=strict_media_types)


def detect_compression(head: bytes) -> str | None:
    """Name the compression ``head`` (a layer's first 262 bytes) starts with.

    Returns ``gzip``, ``zstd``, ``bzip2``, ``xz``, ``tar`` for a tar header,
    or None when no known magic is present (an empty or pre-POSIX tar).
    """
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    for name, magic in _FOREIGN_MAGIC.items():
        if head.startswith(magic):
            return name
    if head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
        return "tar"
    return None


class _Verifier:
    """Checks layers against configs, measuring each layer at most once."""

    def __init__(self, strict_media_types: bool, workers: int | None):
        self.strict = strict_media_types
        self.workers = workers or os.cpu_count() or 1
        self.measured: dict[tuple[Digest, str], _Measured] = {}
        self.failures: dict[tuple[Digest, str], OCILayoutError] = {}

    def verify(self, layers: Sequence[LayerInput], config: dict) -> list[LayerCheck]:
        descriptors = [_as_descriptor(d, i) for i, (_, d) in enumerate(layers)]
        paths = [None if p is None else str(p) for p, _ in layers]
        expected = _diff_ids(config, len(layers))

        # Measure every layer not measured before, in parallel.
        jobs = {}
        for path, descriptor, diff_id in zip(paths, descriptors, expected):
            key = (descriptor.digest, diff_id.algorithm)
            if path is not None and key not in self.measured:
                jobs[key] = (path, descriptor, diff_id)
        self._measure_all(jobs)

        # Compare in manifest order; the first failure is raised.
        checks = []
        for index, (path, descriptor, diff_id) in enumerate(
            zip(paths, descriptors, expected)
        ):
            check = self._check(index, path, descriptor, diff_id)
            self._raise_if_failed(check)
            checks.append(check)
        return checks

    def _measure_all(self, jobs: dict) -> None:
        order = sorted(jobs.items(), key=lambda item: item[1][1].size, reverse=True)
        count = max(1, min(self.workers, len(order)))
        with ThreadPoolExecutor(count, thread_name_prefix="ocilayout-deep") as pool:
            futures = {key: pool.submit(_measure, *job) for key, job in order}
        for key, future in futures.items():
            error = future.exception()
            if error is None:
                self.measured[key] = future.result()
            elif isinstance(error, OCILayoutError):
                self.failures[key] = error
            else:
                raise error

    def _check(
        self, index: int, path: str | None, descriptor: Descriptor, diff_id: Digest
    ) -> LayerCheck:
        key = (descriptor.digest, diff_id.algorithm)
        error = self.failures.get(key)
        if error is not None:
            raise error
        measured = self.measured.get(key) if path is not None else None
        return LayerCheck(
            index=index,
            digest=str(descriptor.digest),
            path=path,
            media_type=descriptor.media_type,
            declared=mt.compression_of(descriptor.media_type),
            detected=measured.detected if measured else None,
            expected_diff_id=str(diff_id),
            diff_id=f"{diff_id.algorithm}:{measured.hex}" if measured else None,
            uncompressed_size=measured.size if measured else None,
        )

    def _raise_if_failed(self, check: LayerCheck) -> None:
        if check.skipped:
            return
        if check.diff_id != check.expected_diff_id:
            raise DiffIDMismatchError(
                check.digest,
                check.path,
                check.expected_diff_id,
                check.diff_id,
                check.index,
            )
        if check.mislabeled and self.strict:
            raise MislabeledCompressionError(
                check.digest, check.path, check.declared, check.detected
            )


def _as_descriptor(value: Descriptor | dict, index: int) -> Descriptor:
    if isinstance(value, Descriptor):
        return value
    return parse_descriptor(value, f"layers[{index}]")


def _diff_ids(config: dict, layer_count: int) -> list[Digest]:
    rootfs = config.get("rootfs")
    values = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(values, list):
        raise InvalidContentError(
            "image config has no rootfs.diff_ids array, so its layers cannot be "
            "verified"
        )
    if len(values) != layer_count:
        raise InvalidContentError(
            f"image config lists {len(values)} rootfs.diff_ids but the manifest "
            f"has {layer_count} layers"
        )
    try:
        return [
            parse_digest(value, f"rootfs.diff_ids[{i}]")
            for i, value in enumerate(values)
        ]
    except UsageError as exc:
        raise InvalidContentError(f"image config: {exc}") from None


def _measure(path: str, descriptor: Descriptor, diff_id: Digest) -> _Measured:
    """Decompress the layer at ``path`` and hash the uncompressed stream.

    The stream is hashed with the algorithm of ``diff_id``.
    """
    digest = str(descriptor.digest)
    with open(path, "rb", buffering=0) as stream:
        head = os.pread(stream.fileno(), TAR_MAGIC_OFFSET + len(TAR_MAGIC), 0)
        detected = detect_compression(head) or "tar"
        hasher = diff_id.hasher()
        if detected == "gzip":
            size = _gunzip_into(stream, hasher.update, digest, path)
        elif detected == "zstd":
            size = _unzstd_into(stream, hasher.update, digest, path)
        elif detected == "tar":
            size = _copy_into(stream, hasher.update)
        else:
            raise CorruptLayerError(
                digest,
                path,
                "layer",
                f"it is compressed with {detected}, which OCI layers do not use",
            )
    return _Measured(detected, hasher.hexdigest(), size)


def _copy_into(stream, sink: Callable[[bytes], None]) -> int:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    while count := stream.readinto(buffer):
        sink(view[:count])
        total += count
    return total


def _gunzip_into(stream, sink: Callable[[bytes], None], digest: str, path: str) -> int:
    """Inflate every gzip member of ``stream`` into ``sink``; return the size.

    RFC 1952 defines a gzip file as a series of members, so concatenated
    members form one stream. Output is produced at most CHUNK_BYTES per call, so a highly
    compressed layer cannot balloon memory.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    total = 0
    try:
        while data := stream.read(CHUNK_BYTES):
            while data:
                if inflater.eof:
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                out = inflater.decompress(data, CHUNK_BYTES)
                sink(out)
                total += len(out)
                data = (
                    inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                )
            # zlib may still hold output after consuming all of its input.
            while not inflater.eof and (out := inflater.decompress(b"", CHUNK_BYTES)):
                sink(out)
                total += len(out)
    except zlib.error as exc:
        raise CorruptLayerError(digest, path, "gzip", str(exc)) from None
    if not inflater.eof:
        raise CorruptLayerError(digest, path, "gzip", "the stream is truncated")
    return total


def _unzstd_into(stream, sink: Callable[[bytes], None], digest: str, path: str) -> int:
    try:
        import zstandard
    except ImportError:
        raise OCILayoutError(
            f"layer {digest} at {path} is zstd-compressed; install the "
            "zstandard package (pip install zstandard) to verify it"
        ) from None
    total = 0
    # NOTE: zstandard's stream reader (0.25) ends quietly at a truncated frame,
    # so a truncated zstd layer surfaces as DiffIDMismatchError, not as corrupt.
    decompressor = zstandard.ZstdDecompressor()
    try:
        with decompressor.stream_reader(
            stream, read_size=CHUNK_BYTES, read_across_frames=True, closefd=False
        ) as reader:
            while chunk := reader.read(CHUNK_BYTES):
                sink(chunk)
                total += len(chunk)
    except zstandard.ZstdError as exc:
        raise CorruptLayerError(digest, path, "zstd", str(exc)) from None
    return total


def _blob_path(root: Path, descriptor: Descriptor) -> str | None:
    path = root / "blobs" / descriptor.digest.algorithm / descriptor.digest.hex
    if path.is_file():
        return str(path)
    if descriptor.urls or mt.is_non_distributable(descriptor.media_type):
        return None
    raise IntegrityError(
        f"layer {descriptor.digest} is missing from layout {root}; it should be "
        f"at {path}"
    )


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(MAX_BODY_BYTES + 1)


def _read_config(root: Path, descriptor: Descriptor) -> dict:
    data = _read_verified(root, descriptor)
    return load_json(data, f"config {descriptor.digest}")


def _read_verified(root: Path, descriptor: Descriptor) -> bytes:
    path = root / "blobs" / descriptor.digest.algorithm / descriptor.digest.hex
    data = _read_small(path)
    if len(data) != descriptor.size:
        raise SizeMismatchError(
            str(descriptor.digest), descriptor.size, len(data), str(path)
        )
    actual = Digest.of_bytes(data, descriptor.digest.algorithm)
    if actual != descriptor.digest:
        raise DigestMismatchError(str(descriptor.digest), str(actual), str(path))
    return data
