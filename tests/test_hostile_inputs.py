"""Hostile input: bad digests, storage keys, bodies, rows and output paths.

Every case checks the invariants of ``Invariants``: the store is unchanged,
nothing appears outside the output, a failed build leaves the output as it
was. Most cases call the library and assert the error class and the
``exit_code`` it maps to; the command-line cases run the real CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import pytest

from ocilayout import build_layout
from ocilayout.build import SELF_CHECK_VARIABLE
from ocilayout.errors import (
    AmbiguousError,
    IntegrityError,
    InvalidContentError,
    MetadataMissingError,
    NotAnImageError,
    NotFoundError,
    OCILayoutError,
    OutputError,
    SizeMismatchError,
    UnsafePathError,
    UnsupportedManifestError,
    UsageError,
)
from ocilayout.manifest import MAX_BODY_BYTES, MAX_JSON_DEPTH
from ocilayout.resolve import MAX_INDEX_DEPTH

from .hostile_support import (
    OCI_INDEX,
    OCI_MANIFEST,
    REPO,
    ROOT,
    Invariants,
    add_blob,
    add_manifest,
    blob_path,
    blob_refs,
    cli_env,
    compact,
    connect,
    drop_unique,
    duplicate_row,
    execute,
    remanifest,
    repository_row,
    run_build,
    sha256_of,
    snapshot,
    stored_body,
    tmpfs,
)

HEX = "a" * 64
# Malformed digests, each with the reason it is malformed.
BAD_DIGESTS = {
    "uppercase": "sha256:" + "A" * 64,
    "short": "sha256:" + "a" * 63,
    "long": "sha256:" + "a" * 65,
    "unknown-algorithm": "md5:" + "0" * 32,
    "sha384": "sha384:" + "a" * 96,
    "empty": "",
    "algorithm-only": "sha256:",
    "no-algorithm": HEX,
    "slash": "sha256:" + "a" * 30 + "/" + "a" * 33,
    "dot-dot": "sha256:../" + "a" * 61,
    "dot-dot-only": "sha256:..",
    "space": "sha256:" + "a" * 32 + " " + "a" * 31,
    "trailing-newline": "sha256:" + HEX + "\n",
    "leading-space": " sha256:" + HEX,
    "tab": "sha256:\t" + "a" * 63,
}
# NUL cannot travel in argv, so it is tried through the library and the rows.
BAD_DIGESTS_NUL = {**BAD_DIGESTS, "nul": "sha256:" + "a" * 32 + "\0" + "a" * 31}


@pytest.fixture(autouse=True)
def production_builds(monkeypatch):
    """Build as in production, without the test session's self-check.

    These tests check every layout with check_layout themselves, so the
    self-check would only turn a silently accepted input into an error.
    """
    monkeypatch.delenv(SELF_CHECK_VARIABLE, raising=False)


@pytest.fixture
def env(tmp_path):
    return cli_env(tmp_path)


@pytest.fixture
def output(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder / "layout"


def capture(store_root, output, tmp_path) -> Invariants:
    return Invariants.capture(store_root, output, tmp_path, tmp_path / "xdg-cache")


def fails(inv: Invariants, kind: type, code: int, **options) -> OCILayoutError:
    """Build with ``options`` expecting ``kind``; check the failure invariants."""
    with pytest.raises(OCILayoutError) as caught:
        build_layout(inv.store, inv.output, **options)
    error = caught.value
    assert isinstance(error, kind), f"expected {kind.__name__}, got {error!r}"
    assert error.exit_code == code, repr(error)
    inv.assert_failed()
    return error


def builds(inv: Invariants, **options):
    result = build_layout(inv.store, inv.output, **options)
    inv.assert_built(result.warnings)
    return result


def layers_of(store_root, manifest: str) -> list[str]:
    return [
        digest for kind, digest in blob_refs(store_root, manifest) if kind == "layer"
    ]


def config_of(store_root, manifest: str) -> str:
    return next(d for kind, d in blob_refs(store_root, manifest) if kind == "config")


def tree_bytes(path) -> dict:
    return {name: state.sha256 for name, state in snapshot(path).items()}


# Digests on the command line


@pytest.mark.parametrize("bad", BAD_DIGESTS.values(), ids=BAD_DIGESTS.keys())
def test_cli_digest_rejected(pushed_single, env, output, tmp_path, bad):
    inv = capture(pushed_single.store.root, output, tmp_path)

    code, summary = run_build(
        env, "--store", pushed_single.store.root, "--digest", bad, "--output", output
    )

    assert code == 2, summary
    assert summary["error"]["type"] == "UsageError"
    assert repr(bad) in summary["error"]["message"]
    inv.assert_failed()


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:../x", "sha512:abc"])
def test_cli_digest_tag_rejected(pushed_single, env, output, tmp_path, bad):
    inv = capture(pushed_single.store.root, output, tmp_path)

    code, summary = run_build(
        env,
        "--store",
        pushed_single.store.root,
        "--image",
        pushed_single.image,
        "--tag",
        bad,
        "--output",
        output,
    )

    assert code == 2, summary
    assert repr(bad) in summary["error"]["message"]
    inv.assert_failed()


def test_library_digest_with_nul_rejected(pushed_single, output, tmp_path):
    bad = BAD_DIGESTS_NUL["nul"]
    inv = capture(pushed_single.store.root, output, tmp_path)

    error = fails(inv, UsageError, 2, digest=bad)

    assert repr(bad) in str(error)


# Digests in database columns


@pytest.mark.parametrize("bad", BAD_DIGESTS_NUL.values(), ids=BAD_DIGESTS_NUL.keys())
def test_tag_row_digest_rejected(pushed_single, output, tmp_path, bad):
    root = pushed_single.store.root
    execute(
        root,
        "UPDATE oci_tags SET manifest_digest = ? WHERE tag = ?",
        bad,
        pushed_single.tag,
    )
    inv = capture(root, output, tmp_path)

    error = fails(
        inv, InvalidContentError, 5, image=pushed_single.image, tag=pushed_single.tag
    )

    assert repr(bad) in str(error)
    assert "oci_tags.manifest_digest" in str(error)


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:../" + "a" * 61])
def test_blob_ref_row_digest_rejected(pushed_single, output, tmp_path, bad):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    execute(
        root,
        "UPDATE manifest_blob_refs SET blob_digest = ? WHERE blob_digest = ?",
        bad,
        layer,
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert bad in str(error)


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:" + "a" * 63])
def test_blob_row_digest_rejected(pushed_single, output, tmp_path, bad):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    execute(root, "UPDATE oci_blobs SET digest = ? WHERE digest = ?", bad, layer)
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert bad in str(error)


@pytest.mark.parametrize("bad", ["sha256:" + "A" * 64, "sha256:../x", ""])
def test_manifest_ref_rows_never_steer_the_build(pushed_multi, tmp_path, bad):
    """The verified index body, not oci_manifest_refs, names the children.

    A malformed child_digest, a cycle or an edge to a missing body in that
    table therefore cannot change what is built.
    """
    root = pushed_multi.store.root
    clean = tmp_path / "clean"
    build_layout(root, clean, digest=pushed_multi.digest)
    repo_id, _ = repository_row(root)
    with connect(root) as db:
        db.execute(
            "UPDATE oci_manifest_refs SET child_digest = ? WHERE rowid = "
            "(SELECT min(rowid) FROM oci_manifest_refs)",
            (bad,),
        )
        db.execute(
            "INSERT INTO oci_manifest_refs (id, repository_id, parent_digest, "
            "child_digest, created_at) VALUES ('cycle', ?, ?, ?, 'now')",
            (repo_id, bad or "x", pushed_multi.digest),
        )
    output = tmp_path / "out" / "layout"
    output.parent.mkdir()
    inv = capture(root, output, tmp_path)

    builds(inv, digest=pushed_multi.digest)

    assert tree_bytes(output) == tree_bytes(clean)


def add_referrer(store_root, subject: str) -> str:
    """Store an SBOM-like artifact whose subject is ``subject``."""
    payload = add_blob(store_root, b'{"spdxVersion":"SPDX-2.3"}')
    empty = add_blob(store_root, b"{}")
    subject_size = len(stored_body(store_root, subject))
    body = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/spdx+json", "digest": payload, "size": 26}
            ],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": subject,
                "size": subject_size,
            },
        }
    )
    digest = add_manifest(
        store_root, body, OCI_MANIFEST, refs=[("config", empty), ("layer", payload)]
    )
    repo_id, _ = repository_row(store_root)
    with connect(store_root) as db:
        db.execute(
            "INSERT INTO oci_manifest_subjects (id, repository_id, manifest_digest, "
            "subject_digest, media_type, artifact_type, size_bytes, annotations, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'now')",
            (
                "referrer",
                repo_id,
                digest,
                subject,
                OCI_MANIFEST,
                "application/spdx+json",
                len(body),
            ),
        )
    return digest


def test_referrer_is_placed(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    referrer = add_referrer(root, pushed_single.digest)
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest, referrers=True)

    assert result.referrers == [referrer]


@pytest.mark.parametrize("bad", BAD_DIGESTS_NUL.values(), ids=BAD_DIGESTS_NUL.keys())
def test_subject_row_digest_rejected(pushed_single, output, tmp_path, bad):
    root = pushed_single.store.root
    add_referrer(root, pushed_single.digest)
    execute(root, "UPDATE oci_manifest_subjects SET manifest_digest = ?", bad)
    inv = capture(root, output, tmp_path)

    error = fails(
        inv, InvalidContentError, 5, digest=pushed_single.digest, referrers=True
    )

    assert repr(bad) in str(error)


def test_subject_row_with_bad_subject_is_unused(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    add_referrer(root, pushed_single.digest)
    execute(
        root,
        "UPDATE oci_manifest_subjects SET subject_digest = ?",
        "SHA256:" + pushed_single.digest[7:],
    )
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest, referrers=True)

    assert result.referrers == []


# Digests in manifest fields

FIELD_DIGESTS = {
    name: BAD_DIGESTS_NUL[name]
    for name in (
        "uppercase",
        "short",
        "unknown-algorithm",
        "empty",
        "algorithm-only",
        "slash",
        "dot-dot",
        "space",
        "nul",
    )
}


def set_config_digest(value):
    def change(document):
        document["config"]["digest"] = value
        return document

    return change


def set_layer_digest(value):
    def change(document):
        document["layers"][0]["digest"] = value
        return document

    return change


def set_subject_digest(value):
    def change(document):
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": value, "size": 10}
        return document

    return change


@pytest.mark.parametrize("bad", FIELD_DIGESTS.values(), ids=FIELD_DIGESTS.keys())
@pytest.mark.parametrize(
    "field,change",
    [
        ("config", set_config_digest),
        ("layers[0]", set_layer_digest),
        ("subject", set_subject_digest),
    ],
)
def test_manifest_field_digest_rejected(
    pushed_single, output, tmp_path, bad, field, change
):
    root = pushed_single.store.root
    digest = remanifest(root, pushed_single.digest, change(bad))
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert f"{field}.digest" in str(error)
    assert repr(bad) in str(error)


@pytest.mark.parametrize("bad", FIELD_DIGESTS.values(), ids=FIELD_DIGESTS.keys())
def test_index_child_digest_rejected(pushed_multi, output, tmp_path, bad):
    root = pushed_multi.store.root

    def change(document):
        for child in document["manifests"]:
            child["digest"] = bad
        return document

    digest = remanifest(
        root, pushed_multi.digest, change, media_type=OCI_INDEX, refs=[]
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert "manifests[0].digest" in str(error)
    assert repr(bad) in str(error)


# Storage keys and paths


UNSAFE_KEYS = {
    "parent": "oci-blobs/../oci-blobs/{d}",
    "escape": "../" + REPO + "/oci-blobs/{d}",
    "absolute": "/etc/passwd",
    "absolute-blob": "{storage}/oci-blobs/{d}",
    "empty-component": "oci-blobs//{d}",
    "dot-component": "./oci-blobs/{d}",
    "trailing-slash": "oci-blobs/{d}/",
    "backslash": "oci-blobs\\{d}",
    "dot-dot-only": "..",
    "nul": "oci-blobs/{d}\0",
    "empty": "",
}


@pytest.mark.parametrize("key", UNSAFE_KEYS.values(), ids=UNSAFE_KEYS.keys())
def test_unsafe_storage_key_rejected(pushed_single, output, tmp_path, key):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    _, storage = repository_row(root)
    key = key.format(d=layer, storage=storage)
    execute(root, "UPDATE oci_blobs SET storage_key = ? WHERE digest = ?", key, layer)
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=pushed_single.digest)

    assert repr(key) in str(error)


def test_unsafe_storage_key_on_cli(pushed_single, env, output, tmp_path):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    key = f"oci-blobs/../../{REPO}/oci-blobs/{layer}"
    execute(root, "UPDATE oci_blobs SET storage_key = ? WHERE digest = ?", key, layer)
    inv = capture(root, output, tmp_path)

    code, summary = run_build(
        env, "--store", root, "--digest", pushed_single.digest, "--output", output
    )

    assert code == 5, summary
    assert summary["error"]["type"] == "UnsafePathError"
    assert summary["error"]["path"] == key
    inv.assert_failed()


def test_key_through_symlinked_folder_rejected(pushed_single, output, tmp_path):
    """A key whose folder is a symlink to an identical blob outside the store."""
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    _, storage = repository_row(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(blob_path(root, layer), outside / layer)
    (storage / "elsewhere").symlink_to(outside)
    execute(
        root,
        "UPDATE oci_blobs SET storage_key = ? WHERE digest = ?",
        f"elsewhere/{layer}",
        layer,
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=pushed_single.digest)

    assert "elsewhere" in str(error)


def replace_with_symlink(path, tmp_path):
    copy = tmp_path / "outside-copy"
    shutil.copy(path, copy)
    path.unlink()
    path.symlink_to(copy)


def replace_with_directory(path, tmp_path):
    path.unlink()
    path.mkdir()


def replace_with_fifo(path, tmp_path):
    path.unlink()
    os.mkfifo(path)


def replace_with_device(path, tmp_path):
    path.unlink()
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))


@pytest.mark.parametrize(
    "replace",
    [
        replace_with_symlink,
        replace_with_directory,
        replace_with_fifo,
        replace_with_device,
    ],
    ids=["symlink", "directory", "fifo", "device"],
)
@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_blob_file_not_regular_rejected(
    pushed_single, output, tmp_path, replace, which
):
    root = pushed_single.store.root
    if which == "manifest":
        _, storage = repository_row(root)
        path = storage / "oci-manifests" / pushed_single.digest
    elif which == "config":
        path = blob_path(root, config_of(root, pushed_single.digest))
    else:
        path = blob_path(root, layers_of(root, pushed_single.digest)[0])
    replace(path, tmp_path)
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=pushed_single.digest)

    assert error.path == str(path)
    assert str(path) in str(error)


def test_storage_path_missing_exit_4(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    missing = tmp_path / "gone"
    execute(root, "UPDATE repositories SET storage_path = ?", str(missing))
    inv = capture(root, output, tmp_path)

    error = fails(inv, MetadataMissingError, 4, digest=pushed_single.digest)

    assert error.reason == "storage-path-missing"
    assert str(missing) in str(error)


def test_storage_path_relative_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    execute(root, "UPDATE repositories SET storage_path = 'storage/docker-local'")
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=pushed_single.digest)

    assert "'storage/docker-local'" in str(error)


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_storage_path_not_a_directory_rejected(pushed_single, output, tmp_path, kind):
    root = pushed_single.store.root
    _, storage = repository_row(root)
    odd = tmp_path / "odd-storage"
    if kind == "symlink":
        odd.symlink_to(storage)
    else:
        odd.write_text("not a folder")
    execute(root, "UPDATE repositories SET storage_path = ?", str(odd))
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=pushed_single.digest)

    assert str(odd) in str(error)


def test_remote_storage_backend_exit_4(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    execute(root, "UPDATE repositories SET storage_backend = 's3'")
    inv = capture(root, output, tmp_path)

    error = fails(inv, MetadataMissingError, 4, digest=pushed_single.digest)

    assert error.reason == "unsupported-storage-backend"


# Manifest bodies


def store_raw(root, body: bytes, media_type=OCI_MANIFEST, original=None) -> str:
    refs = blob_refs(root, original) if original else []
    return add_manifest(root, body, media_type, refs=refs)


@pytest.mark.parametrize(
    "body,message",
    [
        (b"not json {", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8 JSON"),
        (b"[]", "expected an object"),
        (b'"a string"', "expected an object"),
        (b"42", "expected an object"),
        (b"null", "expected an object"),
        (b"", "not valid JSON"),
        (b'{"schemaVersion":2,"schemaVersion":2,"config":{}}', "duplicate JSON key"),
        (b"{" * 100_000, f"deeper than {MAX_JSON_DEPTH}"),
        (
            b'{"a":' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
            f"deeper than {MAX_JSON_DEPTH}",
        ),
        (b'{"schemaVersion":2,"mediaType":7}', "invalid mediaType"),
        (b'{"schemaVersion":2}', "neither 'manifests' nor 'config'"),
    ],
    ids=[
        "garbage",
        "binary",
        "array",
        "string",
        "number",
        "null",
        "empty",
        "duplicate-key",
        "open-braces",
        "deep-array",
        "mediatype-number",
        "no-fields",
    ],
)
def test_malformed_body_rejected(pushed_single, output, tmp_path, body, message):
    root = pushed_single.store.root
    digest = store_raw(root, body)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert digest in str(error)
    assert message in str(error)


def test_deep_nesting_in_utf16_rejected(pushed_single, output, tmp_path):
    text = '["\u225b",' + "[" * 50_000 + "]" * 50_000 + "]"
    body = text.encode("utf-16-le")
    root = pushed_single.store.root
    digest = store_raw(root, body)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert digest in str(error)


def test_huge_body_rejected_before_reading(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    padding = "x" * (MAX_BODY_BYTES + 1)
    body = compact({"schemaVersion": 2, "annotations": {"pad": padding}})
    digest = store_raw(root, body)
    inv = capture(root, output, tmp_path)

    error, bytes_read = fails_counting_reads(inv, digest=digest)

    assert isinstance(error, InvalidContentError)
    assert error.exit_code == 5
    assert str(MAX_BODY_BYTES) in str(error)
    assert bytes_read < MAX_BODY_BYTES
    inv.assert_failed()


def test_body_larger_than_its_row_read_bounded(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    _, storage = repository_row(root)
    path = storage / "oci-manifests" / pushed_single.digest
    with open(path, "ab") as handle:
        handle.truncate(64 * MAX_BODY_BYTES)
    inv = capture(root, output, tmp_path)

    error, bytes_read = fails_counting_reads(inv, digest=pushed_single.digest)

    assert isinstance(error, SizeMismatchError)
    assert error.actual == MAX_BODY_BYTES + 1
    assert bytes_read < 2 * MAX_BODY_BYTES
    inv.assert_failed()


def fails_counting_reads(inv: Invariants, **options) -> tuple[OCILayoutError, int]:
    """Build expecting failure; return the error and the bytes the build read."""
    before = _bytes_read()
    with pytest.raises(OCILayoutError) as caught:
        build_layout(inv.store, inv.output, **options)
    return caught.value, _bytes_read() - before


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and its kin."""
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def test_body_media_type_differs_from_row(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    docker = "application/vnd.docker.distribution.manifest.v2+json"
    execute(
        root,
        "UPDATE artifacts SET content_type = ? WHERE storage_key = ?",
        docker,
        f"oci-manifests/{pushed_single.digest}",
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=pushed_single.digest)

    assert docker in str(error)
    assert OCI_MANIFEST in str(error)


def test_body_media_type_differs_from_index(pushed_multi, output, tmp_path):
    root = pushed_multi.store.root
    docker = "application/vnd.docker.distribution.manifest.v2+json"

    def change(document):
        for child in document["manifests"]:
            child["mediaType"] = docker
        return document

    digest = remanifest(
        root, pushed_multi.digest, change, media_type=OCI_INDEX, refs=[]
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert docker in str(error)
    assert "the index descriptor" in str(error)


def with_fields(**fields):
    def change(document):
        for name, value in fields.items():
            if value is None:
                document.pop(name, None)
            else:
                document[name] = value
        return document

    return change


def with_config_size(value):
    def change(document):
        document["config"]["size"] = value
        return document

    return change


def with_layer_size(value):
    def change(document):
        document["layers"][0]["size"] = value
        return document

    return change


@pytest.mark.parametrize(
    "change,message",
    [
        (with_fields(manifests=[]), "carries 'manifests'"),
        (with_fields(config=None), "no config descriptor"),
        (with_fields(layers={"not": "a list"}), "layers is not an array"),
        (with_fields(schemaVersion=3), "schemaVersion 3"),
        (with_fields(schemaVersion="2"), "schemaVersion '2'"),
        (with_fields(schemaVersion=2.0), "schemaVersion 2.0"),
        (with_config_size(-1), "size -1"),
        (with_config_size(1.5), "size 1.5"),
        (with_config_size("12"), "size '12'"),
        (with_config_size(True), "size True"),
        (with_config_size(None), "size None"),
        (with_layer_size(-(2**63)), f"size {-(2**63)}"),
        (with_fields(config="sha256:" + HEX), "config is not a JSON object"),
        (with_fields(artifactType="not a media type"), "artifactType"),
    ],
    ids=[
        "manifests",
        "no-config",
        "layers-object",
        "schema-3",
        "schema-string",
        "schema-float",
        "negative-size",
        "float-size",
        "string-size",
        "bool-size",
        "null-size",
        "huge-negative-size",
        "config-string",
        "bad-artifact-type",
    ],
)
def test_manifest_body_contradiction_rejected(
    pushed_single, output, tmp_path, change, message
):
    root = pushed_single.store.root
    digest = remanifest(root, pushed_single.digest, change)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert message in str(error)
    assert digest in str(error)


@pytest.mark.parametrize("field", ["layers", "config"])
def test_index_carrying_image_fields_rejected(pushed_multi, output, tmp_path, field):
    root = pushed_multi.store.root
    digest = remanifest(
        root,
        pushed_multi.digest,
        with_fields(**{field: []}),
        media_type=OCI_INDEX,
        refs=[],
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert f"carries {field!r}" in str(error)


def test_schema1_manifest_unsupported(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    digest = store_raw(
        root,
        compact({"schemaVersion": 1, "name": "x", "fsLayers": []}),
        media_type="application/vnd.docker.distribution.manifest.v1+json",
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsupportedManifestError, 1, digest=digest)

    assert "schema 1" in str(error)


def test_artifact_is_not_an_image(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    referrer = add_referrer(root, pushed_single.digest)
    inv = capture(root, output, tmp_path)

    error = fails(inv, NotAnImageError, 1, digest=referrer)

    assert "application/vnd.oci.empty.v1+json" in str(error)


# Table contents


def test_blob_row_size_differs_from_descriptor(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    execute(
        root, "UPDATE oci_blobs SET size_bytes = size_bytes + 1 WHERE digest = ?", layer
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert layer in str(error)
    assert "oci_blobs" in str(error)


def test_descriptor_and_row_agree_but_file_differs(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    document = json.loads(stored_body(root, pushed_single.digest))
    layer = document["layers"][0]["digest"]
    digest = remanifest(
        root, pushed_single.digest, with_layer_size(document["layers"][0]["size"] + 7)
    )
    execute(
        root, "UPDATE oci_blobs SET size_bytes = size_bytes + 7 WHERE digest = ?", layer
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, SizeMismatchError, 5, digest=digest)

    assert error.digest == layer
    assert error.actual + 7 == error.expected


def test_artifacts_row_size_wrong(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    execute(root, "UPDATE artifacts SET size_bytes = size_bytes - 1")
    inv = capture(root, output, tmp_path)

    error = fails(inv, SizeMismatchError, 5, digest=pushed_single.digest)

    assert error.digest == pushed_single.digest


def test_manifest_blob_refs_extra_row_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    extra = add_blob(root, b"an unrelated blob")
    repo_id, _ = repository_row(root)
    execute(
        root,
        "INSERT INTO manifest_blob_refs (id, repository_id, "
        "manifest_digest, blob_digest, kind, created_at) VALUES "
        "('extra', ?, ?, ?, 'layer', 'now')",
        repo_id,
        pushed_single.digest,
        extra,
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert extra in str(error)


def test_duplicate_blob_ref_rows_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    drop_unique(root, "manifest_blob_refs")
    duplicate_row(root, "manifest_blob_refs", "blob_digest = ?", layer)
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert "duplicate manifest_blob_refs" in str(error)
    assert layer in str(error)


def test_duplicate_blob_rows_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    drop_unique(root, "oci_blobs")
    duplicate_row(
        root,
        "oci_blobs",
        "digest = ?",
        layer,
        storage_key=f"oci-blobs/elsewhere-{layer}",
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest)

    assert "oci_blobs" in str(error)
    assert layer in str(error)


def test_duplicate_tag_rows_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    other = remanifest(
        root, pushed_single.digest, with_fields(annotations={"copy": "yes"})
    )
    drop_unique(root, "oci_tags")
    duplicate_row(root, "oci_tags", "tag = ?", pushed_single.tag, manifest_digest=other)
    inv = capture(root, output, tmp_path)

    error = fails(
        inv, IntegrityError, 5, image=pushed_single.image, tag=pushed_single.tag
    )

    assert pushed_single.digest in str(error)
    assert other in str(error)


def test_duplicate_repository_rows_rejected(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    decoy = tmp_path / "decoy-storage"
    decoy.mkdir()
    drop_unique(root, "repositories")
    duplicate_row(root, "repositories", "key = ?", REPO, storage_path=str(decoy))
    inv = capture(root, output, tmp_path)

    error = fails(inv, IntegrityError, 5, digest=pushed_single.digest, repo=REPO)

    assert REPO in str(error)


def test_duplicate_subject_rows_place_referrer_once(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    referrer = add_referrer(root, pushed_single.digest)
    drop_unique(root, "oci_manifest_subjects")
    duplicate_row(root, "oci_manifest_subjects", "manifest_digest = ?", referrer)
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest, referrers=True)

    assert result.referrers == [referrer]


def nest_index(root, child: str, child_type: str, child_size: int) -> str:
    body = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": child_type, "digest": child, "size": child_size}
            ],
        }
    )
    return add_manifest(root, body, OCI_INDEX)


def test_index_chain_deeper_than_bound(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    digest, media_type = pushed_single.digest, OCI_MANIFEST
    for _ in range(MAX_INDEX_DEPTH + 1):
        size = len(stored_body(root, digest))
        digest, media_type = nest_index(root, digest, media_type, size), OCI_INDEX
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert f"deeper than {MAX_INDEX_DEPTH}" in str(error)


def test_index_chain_within_bound_builds(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    digest, media_type = pushed_single.digest, OCI_MANIFEST
    for _ in range(MAX_INDEX_DEPTH - 1):
        size = len(stored_body(root, digest))
        digest, media_type = nest_index(root, digest, media_type, size), OCI_INDEX
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=digest)

    assert result.manifest_digest == pushed_single.digest
    assert len(result.chain) == MAX_INDEX_DEPTH


def test_index_child_without_body_exit_4(pushed_multi, output, tmp_path):
    root = pushed_multi.store.root
    for digest in pushed_multi.source.manifests.values():
        execute(
            root,
            "DELETE FROM artifacts WHERE storage_key = ?",
            f"oci-manifests/{digest}",
        )
    inv = capture(root, output, tmp_path)

    error = fails(inv, MetadataMissingError, 4, digest=pushed_multi.digest)

    assert error.reason == "manifest-body-missing"
    assert error.digest in pushed_multi.source.manifests.values()


def test_full_shape_leaves_out_child_without_body(pushed_multi, output, tmp_path):
    root = pushed_multi.store.root
    missing = pushed_multi.source.manifests["linux/arm64/v8"]
    execute(
        root, "DELETE FROM artifacts WHERE storage_key = ?", f"oci-manifests/{missing}"
    )
    inv = capture(root, output, tmp_path)

    result = build_layout(root, output, digest=pushed_multi.digest, shape="full")

    assert any(missing in note for note in result.warnings)
    assert not (output / "blobs" / "sha256" / missing[7:]).exists()
    inv.check_store()
    inv.check_nothing_else()


# Rows of another repository


@pytest.fixture
def two_repos(pushed_single):
    """The single image pushed into docker-local and into other-local."""
    from emulator.push import push

    push(
        pushed_single.store,
        "other-local",
        pushed_single.image,
        pushed_single.tag,
        pushed_single.source.spec,
    )
    return pushed_single


def test_digest_in_two_repositories_is_ambiguous(two_repos, output, tmp_path):
    inv = capture(two_repos.store.root, output, tmp_path)

    error = fails(inv, AmbiguousError, 3, digest=two_repos.digest)

    assert error.candidates == ["docker-local", "other-local"]


def test_blob_row_of_other_repository_unused(two_repos, output, tmp_path):
    root = two_repos.store.root
    layer = layers_of(root, two_repos.digest)[0]
    repo_id, _ = repository_row(root)
    execute(
        root,
        "DELETE FROM oci_blobs WHERE digest = ? AND repository_id = ?",
        layer,
        repo_id,
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, MetadataMissingError, 4, digest=two_repos.digest, repo=REPO)

    assert error.reason == "blob-row-missing"
    assert error.digest == layer


def test_manifest_of_other_repository_unused(two_repos, output, tmp_path):
    root = two_repos.store.root
    repo_id, _ = repository_row(root)
    execute(
        root,
        "DELETE FROM artifacts WHERE repository_id = ? AND storage_key = ?",
        repo_id,
        f"oci-manifests/{two_repos.digest}",
    )
    inv = capture(root, output, tmp_path)

    error = fails(
        inv,
        MetadataMissingError,
        4,
        image=two_repos.image,
        tag=two_repos.tag,
        repo=REPO,
    )

    assert error.reason == "manifest-body-missing"


def test_key_into_other_repository_rejected(two_repos, output, tmp_path):
    root = two_repos.store.root
    layer = layers_of(root, two_repos.digest)[0]
    repo_id, _ = repository_row(root)
    key = f"../other-local/oci-blobs/{layer}"
    execute(
        root,
        "UPDATE oci_blobs SET storage_key = ? WHERE digest = ? AND repository_id = ?",
        key,
        layer,
        repo_id,
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, UnsafePathError, 5, digest=two_repos.digest, repo=REPO)

    assert repr(key) in str(error)


# Output paths


def test_output_existing_directory_kept(pushed_single, env, output, tmp_path):
    output.mkdir()
    (output / "keep").write_text("mine")
    inv = capture(pushed_single.store.root, output, tmp_path)

    code, summary = run_build(
        env,
        "--store",
        pushed_single.store.root,
        "--digest",
        pushed_single.digest,
        "--output",
        output,
    )

    assert code == 1
    assert summary["error"]["type"] == "OutputError"
    assert summary["error"]["path"] == str(output)
    inv.assert_failed()


def test_output_existing_file_kept(pushed_single, env, output, tmp_path):
    output.write_text("a file")
    inv = capture(pushed_single.store.root, output, tmp_path)

    code, summary = run_build(
        env,
        "--store",
        pushed_single.store.root,
        "--digest",
        pushed_single.digest,
        "--output",
        output,
    )

    assert code == 1
    assert "a file" in summary["error"]["message"]
    assert output.read_text() == "a file"
    inv.assert_failed()


def test_output_dangling_symlink_kept(pushed_single, output, tmp_path):
    output.symlink_to(tmp_path / "nowhere")
    inv = capture(pushed_single.store.root, output, tmp_path)

    with pytest.raises(OutputError):
        build_layout(pushed_single.store.root, output, digest=pushed_single.digest)

    assert os.readlink(output) == str(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    inv.check_store()
    inv.check_nothing_else()


def test_output_parent_missing(pushed_single, env, tmp_path):
    output = tmp_path / "no" / "such" / "layout"
    inv = capture(pushed_single.store.root, output, tmp_path)

    code, summary = run_build(
        env,
        "--store",
        pushed_single.store.root,
        "--digest",
        pushed_single.digest,
        "--output",
        output,
    )

    assert code == 1
    assert str(output.parent) in summary["error"]["message"]
    inv.assert_failed()


@pytest.mark.parametrize("where", ["store-root", "storage-path", "oci-blobs"])
def test_output_inside_store_rejected(pushed_single, tmp_path, where):
    root = pushed_single.store.root
    _, storage = repository_row(root)
    parent = {
        "store-root": root,
        "storage-path": storage,
        "oci-blobs": storage / "oci-blobs",
    }[where]
    output = parent / "layout"
    inv = capture(root, output, tmp_path)
    inv.output = tmp_path / "not-the-store"  # the store itself must not change

    with pytest.raises(OutputError):
        build_layout(root, output, digest=pushed_single.digest)

    assert not output.exists()
    inv.check_store()


def test_output_on_read_only_filesystem(pushed_single, env, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        output = mounted / "layout"
        inv = capture(pushed_single.store.root, output, tmp_path)

        code, summary = run_build(
            env,
            "--store",
            pushed_single.store.root,
            "--digest",
            pushed_single.digest,
            "--output",
            output,
        )

        assert code == 1, summary
        assert summary["error"]["type"] == "OutputError"
        assert str(mounted) in summary["error"]["message"]
        inv.assert_failed()
        assert os.listdir(mounted) == []


def test_output_path_with_colon_still_builds(pushed_single, tmp_path):
    """A colon is legal in a path; the target string shows it unchanged."""
    output = tmp_path / "out:1" / "layout"
    output.parent.mkdir()
    inv = capture(pushed_single.store.root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest)

    assert result.target == f"oci-dir:{output}"


# Hardlinked blobs and the store's permissions


def test_writable_store_blobs_warned(pushed_single, env, output, tmp_path):
    root = pushed_single.store.root
    inv = capture(root, output, tmp_path)

    code, summary = run_build(
        env,
        "--store",
        root,
        "--digest",
        pushed_single.digest,
        "--output",
        output,
        "--link",
        "hardlink",
    )

    assert code == 0, summary
    assert set(summary["placement_methods"]) == {"hardlink"}
    assert any("writable in the store" in w for w in summary["warnings"])
    inv.assert_built(summary["warnings"])


def test_read_only_store_blobs_stay_read_only(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    _, storage = repository_row(root)
    for blob in (storage / "oci-blobs").iterdir():
        blob.chmod(0o444)
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest, link="hardlink")

    assert not any("writable" in warning for warning in result.warnings)
    for blob in (output / "blobs" / "sha256").iterdir():
        assert blob.stat().st_mode & 0o222 == 0, blob


def test_writable_warning_on_terminal_output(pushed_single, env, output, tmp_path):
    import subprocess
    import sys

    from .hostile_support import ROOT

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocilayout",
            "build",
            "--store",
            str(pushed_single.store.root),
            "--digest",
            pushed_single.digest,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert re.search(r"warning: \d+ hardlinked blob\(s\) are writable", result.stderr)


def test_config_json_body_read_bounded(pushed_single, output, tmp_path):
    """A config recorded as larger than the JSON limit is never read."""
    root = pushed_single.store.root
    big = compact(
        {"architecture": "amd64", "os": "linux", "pad": "x" * (MAX_BODY_BYTES + 1)}
    )
    config = add_blob(root, big)
    layers = layers_of(root, pushed_single.digest)

    def change(document):
        document["config"] = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": len(big),
        }
        return document

    digest = remanifest(
        root,
        pushed_single.digest,
        change,
        refs=[("config", config)] + [("layer", d) for d in layers],
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert config in str(error)


def test_pending_delete_blob_is_absent(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    layer = layers_of(root, pushed_single.digest)[0]
    execute(
        root, "UPDATE oci_blobs SET pending_delete_at = 'now' WHERE digest = ?", layer
    )
    inv = capture(root, output, tmp_path)

    error = fails(inv, MetadataMissingError, 4, digest=pushed_single.digest)

    assert error.digest == layer
    assert "pending deletion" in str(error)


def test_unknown_repository_exit_3(pushed_single, output, tmp_path):
    inv = capture(pushed_single.store.root, output, tmp_path)

    error = fails(
        inv, NotFoundError, 3, digest=pushed_single.digest, repo="../docker-local"
    )

    assert "'../docker-local'" in str(error)


def test_manifest_json_unchanged_in_layout(pushed_single, output, tmp_path):
    """The placed manifest is byte for byte the stored one."""
    root = pushed_single.store.root
    inv = capture(root, output, tmp_path)

    builds(inv, digest=pushed_single.digest)

    placed = output / "blobs" / "sha256" / pushed_single.digest[7:]
    assert placed.read_bytes() == stored_body(root, pushed_single.digest)
    assert (
        json.loads((output / "index.json").read_bytes())["manifests"][0]["digest"]
        == pushed_single.digest
    )
    assert sha256_of(placed.read_bytes()) == pushed_single.digest


def test_referrer_layer_equal_to_subject_body(pushed_single, output, tmp_path):
    """An artifact may carry any bytes as a layer, the subject's body included."""
    root = pushed_single.store.root
    subject_body = stored_body(root, pushed_single.digest)
    copy = add_blob(root, subject_body)
    empty = add_blob(root, b"{}")
    body = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.copy",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [
                {"mediaType": OCI_MANIFEST, "digest": copy, "size": len(subject_body)}
            ],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": pushed_single.digest,
                "size": len(subject_body),
            },
        }
    )
    referrer = add_manifest(
        root, body, OCI_MANIFEST, refs=[("config", empty), ("layer", copy)]
    )
    repo_id, _ = repository_row(root)
    execute(
        root,
        "INSERT INTO oci_manifest_subjects (id, repository_id, manifest_digest, "
        "subject_digest, media_type, artifact_type, size_bytes, annotations, "
        "created_at) VALUES ('copy', ?, ?, ?, ?, NULL, ?, NULL, 'now')",
        repo_id,
        referrer,
        pushed_single.digest,
        OCI_MANIFEST,
        len(body),
    )
    inv = capture(root, output, tmp_path)

    result = builds(inv, digest=pushed_single.digest, referrers=True)

    assert result.referrers == [referrer]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-32", "nan"])
def test_body_that_is_not_utf8_json_rejected(pushed_single, output, tmp_path, encoding):
    root = pushed_single.store.root
    text = stored_body(root, pushed_single.digest).decode()
    if encoding == "nan":
        body = (text[:-1] + ',"x-extra":NaN}').encode()
    else:
        body = text.encode(encoding)
    digest = store_raw(root, body, original=pushed_single.digest)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert digest in str(error)


def test_tag_with_line_feed_gets_valid_ref_name(pushed_single, output, tmp_path):
    root = pushed_single.store.root
    execute(root, "UPDATE oci_tags SET tag = 'single' || char(10) WHERE tag = 'single'")
    inv = capture(root, output, tmp_path)

    result = builds(inv, image=pushed_single.image, tag="single\n")

    assert re.fullmatch(r"[A-Za-z0-9._:@+/-]+", result.ref_name), repr(result.ref_name)


# Secrets


def test_signing_key_never_reaches_scanner(pushed_single, tmp_path, monkeypatch):
    from ocilayout.scan import scan_image

    scanner = ROOT / "tests" / "fake_scanners" / "fake_scanner.py"
    record = tmp_path / "scanner-record.json"
    monkeypatch.setenv("OCILAYOUT_TOKEN_KEY", "-----BEGIN PRIVATE KEY-----x")
    monkeypatch.setenv("FAKE_SCANNER_MODE", "syft-ok")
    monkeypatch.setenv("FAKE_SCANNER_RECORD", str(record))

    scan_image(
        pushed_single.store.root,
        digest=pushed_single.digest,
        scanner="syft",
        scanner_path=scanner,
        workspace=tmp_path,
    )

    names = json.loads(record.read_text())["environment_names"]
    assert "OCILAYOUT_TOKEN_KEY" not in names


@pytest.mark.parametrize("value", ["", None])
def test_empty_media_type_field_rejected(pushed_single, output, tmp_path, value):
    root = pushed_single.store.root
    declared = b'"mediaType":"application/vnd.oci.image.manifest.v1+json"'
    replacement = b'"mediaType":' + json.dumps(value).encode()
    body = stored_body(root, pushed_single.digest).replace(declared, replacement, 1)
    assert replacement in body
    digest = store_raw(root, body, original=pushed_single.digest)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert "mediaType" in str(error)


def test_diff_ids_count_must_match_layers(pushed_single, output, tmp_path):
    root = pushed_single.store.root

    def repeat_last_layer(document):
        document["layers"].append(document["layers"][-1])
        return document

    digest = remanifest(root, pushed_single.digest, repeat_last_layer)
    inv = capture(root, output, tmp_path)

    error = fails(inv, InvalidContentError, 5, digest=digest)

    assert "diff_ids" in str(error)
