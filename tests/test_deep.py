"""Deep verification: layers decompress to their config's diff_ids."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard

from emulator.imagegen import host_platform, make_image
from emulator.push import push
from ocilayout import build_layout
from ocilayout import mediatypes as mt
from ocilayout.deep import (
    CorruptLayerError,
    DiffIDMismatchError,
    MislabeledCompressionError,
    detect_compression,
    verify_diff_ids,
    verify_layout,
)
from ocilayout.errors import InvalidContentError

from .helpers import run_json

MEDIA_TYPES = {
    "gzip": mt.OCI_LAYER_GZIP,
    "zstd": mt.OCI_LAYER_ZSTD,
    "tar": mt.OCI_LAYER_TAR,
}


def make_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_layer(folder: Path, blob: bytes, media_type: str) -> tuple[Path, dict]:
    descriptor = {"mediaType": media_type, "digest": sha256(blob), "size": len(blob)}
    path = folder / descriptor["digest"].split(":")[1]
    path.write_bytes(blob)
    return path, descriptor


def config_with(diff_ids: list[str]) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


@pytest.fixture
def tar_bytes() -> bytes:
    return make_tar({"etc/os-release": b"ID=test\n", "bin/tool": b"\x7fELF" * 5000})


# One layer at a time


@pytest.mark.parametrize("compression", ["gzip", "zstd", "tar"])
def test_layer_matches_diff_id(tmp_path, tar_bytes, compression):
    blob = compress(tar_bytes, compression)
    layer = write_layer(tmp_path, blob, MEDIA_TYPES[compression])

    (check,) = verify_diff_ids([layer], config_with([sha256(tar_bytes)]))

    assert check.diff_id == sha256(tar_bytes)
    assert check.expected_diff_id == sha256(tar_bytes)
    assert check.detected == compression
    assert check.declared == compression
    assert check.uncompressed_size == len(tar_bytes)
    assert check.warning is None


def test_concatenated_gzip_members(tmp_path, tar_bytes):
    second = make_tar({"usr/share/doc": b"x" * 3000})
    blob = gzip.compress(tar_bytes[:4096], mtime=0) + gzip.compress(
        tar_bytes[4096:] + second, mtime=0
    )
    layer = write_layer(tmp_path, blob, mt.OCI_LAYER_GZIP)

    (check,) = verify_diff_ids([layer], config_with([sha256(tar_bytes + second)]))

    assert check.diff_id == sha256(tar_bytes + second)


def test_multi_frame_zstd(tmp_path, tar_bytes):
    compressor = zstandard.ZstdCompressor()
    blob = compressor.compress(tar_bytes[:1000]) + compressor.compress(tar_bytes[1000:])
    layer = write_layer(tmp_path, blob, mt.OCI_LAYER_ZSTD)

    (check,) = verify_diff_ids([layer], config_with([sha256(tar_bytes)]))

    assert check.diff_id == sha256(tar_bytes)


def test_several_layers_keep_order(tmp_path):
    tars = [make_tar({f"layer{i}": bytes([i]) * (1000 * (i + 1))}) for i in range(4)]
    compressions = ["gzip", "zstd", "tar", "gzip"]
    layers = [
        write_layer(tmp_path, compress(tar, kind), MEDIA_TYPES[kind])
        for tar, kind in zip(tars, compressions)
    ]

    checks = verify_diff_ids(layers, config_with([sha256(t) for t in tars]))

    assert [c.index for c in checks] == [0, 1, 2, 3]
    assert [c.detected for c in checks] == compressions
    assert [c.diff_id for c in checks] == [sha256(t) for t in tars]


# Failures


def test_wrong_diff_id_raises(tmp_path, tar_bytes):
    path, descriptor = write_layer(
        tmp_path, gzip.compress(tar_bytes), mt.OCI_LAYER_GZIP
    )
    wrong = sha256(b"another tar")

    with pytest.raises(DiffIDMismatchError) as caught:
        verify_diff_ids([(path, descriptor)], config_with([wrong]))

    assert caught.value.digest == descriptor["digest"]
    assert caught.value.path == str(path)
    assert caught.value.expected == wrong
    assert caught.value.actual == sha256(tar_bytes)
    assert caught.value.index == 0
    assert caught.value.exit_code == 5


def test_swapped_diff_ids_raise(tmp_path):
    tars = [make_tar({"a": b"1"}), make_tar({"b": b"2"})]
    layers = [write_layer(tmp_path, gzip.compress(t), mt.OCI_LAYER_GZIP) for t in tars]

    with pytest.raises(DiffIDMismatchError) as caught:
        verify_diff_ids(layers, config_with([sha256(tars[1]), sha256(tars[0])]))

    assert caught.value.index == 0
    assert caught.value.digest == layers[0][1]["digest"]


def test_gzip_labelled_tar_reported(tmp_path, tar_bytes):
    layer = write_layer(tmp_path, tar_bytes, mt.OCI_LAYER_GZIP)

    (check,) = verify_diff_ids([layer], config_with([sha256(tar_bytes)]))

    assert check.mislabeled
    assert check.declared == "gzip"
    assert check.detected == "tar"
    assert check.diff_id == sha256(tar_bytes)
    assert layer[1]["digest"] in check.warning
    assert mt.OCI_LAYER_GZIP in check.warning


def test_gzip_labelled_tar_strict_raises(tmp_path, tar_bytes):
    path, descriptor = write_layer(tmp_path, tar_bytes, mt.DOCKER_LAYER_GZIP)

    with pytest.raises(MislabeledCompressionError) as caught:
        verify_diff_ids(
            [(path, descriptor)],
            config_with([sha256(tar_bytes)]),
            strict_media_types=True,
        )

    assert caught.value.digest == descriptor["digest"]
    assert caught.value.path == str(path)
    assert caught.value.expected == "gzip"
    assert caught.value.actual == "tar"


@pytest.mark.parametrize(
    ("compression", "damage"),
    [
        ("gzip", lambda blob: blob[: len(blob) // 2]),
        ("gzip", lambda blob: blob[:-8] + bytes(8)),
        ("gzip", lambda blob: blob + b"trailing garbage"),
        (
            "zstd",
            lambda blob: blob[:20] + bytes(b ^ 0xFF for b in blob[20:60]) + blob[60:],
        ),
    ],
    ids=["gzip-truncated", "gzip-bad-trailer", "gzip-trailing", "zstd-flipped"],
)
def test_damaged_stream_is_corrupt(tmp_path, tar_bytes, compression, damage):
    blob = damage(compress(tar_bytes, compression))
    path, descriptor = write_layer(tmp_path, blob, MEDIA_TYPES[compression])

    with pytest.raises(CorruptLayerError) as caught:
        verify_diff_ids([(path, descriptor)], config_with([sha256(tar_bytes)]))

    assert caught.value.digest == descriptor["digest"]
    assert caught.value.path == str(path)
    assert caught.value.expected == compression


def test_truncated_zstd_fails_diff_id(tmp_path, tar_bytes):
    blob = compress(tar_bytes, "zstd")
    path, descriptor = write_layer(tmp_path, blob[: len(blob) // 2], mt.OCI_LAYER_ZSTD)

    with pytest.raises(DiffIDMismatchError) as caught:
        verify_diff_ids([(path, descriptor)], config_with([sha256(tar_bytes)]))

    assert caught.value.expected == sha256(tar_bytes)


def test_truncated_gzip_names_compression(tmp_path, tar_bytes):
    blob = gzip.compress(tar_bytes)[:100]
    path, descriptor = write_layer(tmp_path, blob, mt.OCI_LAYER_GZIP)

    with pytest.raises(CorruptLayerError) as caught:
        verify_diff_ids([(path, descriptor)], config_with([sha256(tar_bytes)]))

    assert caught.value.expected == "gzip"
    assert "truncated" in caught.value.actual


def test_xz_layer_rejected(tmp_path, tar_bytes):
    path, descriptor = write_layer(tmp_path, lzma.compress(tar_bytes), mt.OCI_LAYER_TAR)

    with pytest.raises(CorruptLayerError) as caught:
        verify_diff_ids([(path, descriptor)], config_with([sha256(tar_bytes)]))

    assert "xz" in str(caught.value)


@pytest.mark.parametrize("diff_ids", [[], ["sha256:" + "0" * 64] * 2])
def test_diff_id_count_mismatch(tmp_path, tar_bytes, diff_ids):
    layer = write_layer(tmp_path, tar_bytes, mt.OCI_LAYER_TAR)

    with pytest.raises(InvalidContentError) as caught:
        verify_diff_ids([layer], config_with(diff_ids))

    assert f"{len(diff_ids)} rootfs.diff_ids" in str(caught.value)


def test_missing_rootfs_rejected(tmp_path, tar_bytes):
    layer = write_layer(tmp_path, tar_bytes, mt.OCI_LAYER_TAR)

    with pytest.raises(InvalidContentError):
        verify_diff_ids([layer], {"architecture": "amd64", "os": "linux"})


def test_absent_non_distributable_skipped(tmp_path, tar_bytes):
    present = write_layer(tmp_path, gzip.compress(tar_bytes), mt.OCI_LAYER_GZIP)
    foreign = {
        "mediaType": mt.DOCKER_FOREIGN_LAYER,
        "digest": "sha256:" + "1" * 64,
        "size": 10,
        "urls": ["https://example.invalid/layer"],
    }

    checks = verify_diff_ids(
        [(None, foreign), present],
        config_with(["sha256:" + "2" * 64, sha256(tar_bytes)]),
    )

    assert checks[0].skipped
    assert not checks[1].skipped
    assert checks[1].diff_id == sha256(tar_bytes)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08", "gzip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh91AY", "bzip2"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\0" * 257 + b"ustar\x0000", "tar"),
        (b"\0" * 262, None),
        (b"", None),
    ],
)
def test_detect_compression(head, expected):
    assert detect_compression(head) == expected


# Memory stays flat


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_highly_compressed_layer_memory_flat(tmp_path, compression):
    size = 256 << 20
    zeros = bytes(1 << 20)
    if compression == "gzip":
        compressor = zlib.compressobj(9, wbits=31)
        blob = b"".join(compressor.compress(zeros) for _ in range(size >> 20))
        blob += compressor.flush()
    else:
        chunks = zstandard.ZstdCompressor().compressobj()
        blob = b"".join(chunks.compress(zeros) for _ in range(size >> 20))
        blob += chunks.flush()
    tar_digest = hashlib.sha256()
    for _ in range(size >> 20):
        tar_digest.update(zeros)
    layer = write_layer(tmp_path, blob, MEDIA_TYPES[compression])

    tracemalloc.start()
    try:
        (check,) = verify_diff_ids(
            [layer], config_with(["sha256:" + tar_digest.hexdigest()])
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert check.uncompressed_size == size
    assert peak < 16 << 20, f"peak {peak} bytes while inflating {size} bytes"


# Real images


@pytest.fixture(scope="module")
def real_image_zstd(tmp_path_factory):
    out = tmp_path_factory.mktemp("image-zstd") / "layout"
    return make_image(out, platforms=[host_platform()], compression="zstd")


def test_real_gzip_image_verifies(real_image_single):
    checks = verify_layout(real_image_single.layout)

    assert len(checks) == 3
    assert {c.detected for c in checks} == {"gzip"}
    assert all(c.diff_id == c.expected_diff_id for c in checks)


def test_real_zstd_image_verifies(real_image_zstd):
    checks = verify_layout(real_image_zstd.layout)

    assert len(checks) == 3
    assert {c.detected for c in checks} == {"zstd"}
    assert all(c.diff_id == c.expected_diff_id for c in checks)


def test_real_index_with_attestations_verifies(real_image_multi):
    checks = verify_layout(real_image_multi.layout)

    platform_layers = [c for c in checks if c.declared == "gzip"]
    assert len(platform_layers) == 6
    assert all(c.diff_id == c.expected_diff_id for c in checks)


# Builds with --verify deep


def push_image(
    store,
    tmp_path: Path,
    layers: list[tuple[bytes, str]],
    diff_ids: list[str],
    tag: str,
) -> str:
    """Write an OCI layout with ``layers`` and push it as ``demo/deep:<tag>``."""
    layout = tmp_path / f"layout-{tag}"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors = [write_layer(blobs, blob, media)[1] for blob, media in layers]
    config = write_json(blobs, mt.OCI_CONFIG, config_with(diff_ids))
    manifest = write_json(
        blobs,
        mt.OCI_MANIFEST,
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config,
            "layers": descriptors,
        },
    )
    manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(
        json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [manifest]}
        )
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return push(store, "docker-local", "demo/deep", tag, f"oci:{layout}:{tag}")


def write_json(folder: Path, media_type: str, document: dict) -> dict:
    body = json.dumps(document).encode()
    return write_layer(folder, body, media_type)[1]


def test_build_deep_passes_real_image(pushed_single, tmp_path):
    code, summary = run_json(
        "build",
        "--store",
        pushed_single.store.root,
        "--digest",
        pushed_single.digest,
        "-o",
        tmp_path / "out",
        "--verify",
        "deep",
        "--no-cache",
    )

    assert code == 0, summary
    assert (tmp_path / "out" / "index.json").is_file()


def test_build_deep_warns_mislabeled(store, tmp_path, tar_bytes):
    digest = push_image(
        store,
        tmp_path,
        [(tar_bytes, mt.OCI_LAYER_GZIP)],
        [sha256(tar_bytes)],
        "mislabeled",
    )

    code, summary = run_json(
        "build",
        "--store",
        store.root,
        "--digest",
        digest,
        "-o",
        tmp_path / "out",
        "--verify",
        "deep",
        "--no-cache",
    )

    assert code == 0, summary
    layer = sha256(tar_bytes)
    assert any(layer in w and "tar" in w for w in summary["warnings"])


def test_build_without_deep_ignores_diff_ids(store, tmp_path, tar_bytes):
    digest = push_image(
        store,
        tmp_path,
        [(gzip.compress(tar_bytes), mt.OCI_LAYER_GZIP)],
        [sha256(b"not this tar")],
        "wrong",
    )

    result = build_layout(store.root, tmp_path / "out", digest=digest)

    assert result.manifest_digest == digest


def test_build_deep_rejects_wrong_diff_id(store, tmp_path, tar_bytes):
    wrong = sha256(b"not this tar")
    digest = push_image(
        store,
        tmp_path,
        [(gzip.compress(tar_bytes), mt.OCI_LAYER_GZIP)],
        [wrong],
        "wrong",
    )
    output = tmp_path / "out"

    code, summary = run_json(
        "build",
        "--store",
        store.root,
        "--digest",
        digest,
        "-o",
        output,
        "--verify",
        "deep",
        "--no-cache",
    )

    assert code == 5
    assert summary["error"]["type"] == "DiffIDMismatchError"
    assert wrong in summary["error"]["message"]
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout-wrong", "store"]
