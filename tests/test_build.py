"""End-to-end builds from the emulator store, read back by real consumers."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import ocilayout

from emulator.imagegen import host_platform
from ocilayout import (
    DigestMismatchError,
    MetadataMissingError,
    NotFoundError,
    build_layout,
    temporary_layout,
)
from ocilayout.platforms import parse_platform, matches

from .helpers import run_cli, run_json, siblings, snapshot_tree, syft_packages, tool


def assert_valid_layout(path: Path) -> None:
    from ocilayout.check import check_layout

    report = check_layout(path)
    assert report.ok, [str(problem) for problem in report.errors]


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An empty folder for outputs, apart from the store, so debris is visible."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def read_index(path: Path) -> dict:
    return json.loads((path / "index.json").read_text())


def blob_file_manifest(store, digest: str) -> Path:
    repo = store.repository("docker-local")
    return Path(repo.storage_path) / "oci-manifests" / digest


def blob_file(store, digest: str) -> Path:
    repo = store.repository("docker-local")
    return Path(repo.storage_path) / "oci-blobs" / digest


def database(store) -> sqlite3.Connection:
    return sqlite3.connect(store.database_path)


# Round trips through real consumers


def test_single_platform_round_trip(pushed_single, tmp_path):
    store_root = pushed_single.store.root
    before = snapshot_tree(store_root)
    output = tmp_path / "layout"

    code, summary = run_json(
        "build", "--store", store_root, "--image", pushed_single.image,
        "--tag", pushed_single.tag, "--output", output,
    )

    assert code == 0, summary
    assert summary["manifest_digest"] == pushed_single.digest
    assert summary["target"] == f"oci-dir:{output}"
    index = read_index(output)
    assert len(index["manifests"]) == 1
    entry = index["manifests"][0]
    assert entry["digest"] == pushed_single.digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "single"
    assert snapshot_tree(store_root) == before
    assert_valid_layout(output)

    inspect = subprocess.run(
        [tool("skopeo"), "inspect", f"oci:{output}:single"],
        capture_output=True, text=True,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == pushed_single.digest

    bundle = tmp_path / "bundle"
    unpack = subprocess.run(
        [tool("umoci"), "unpack", "--rootless", "--image", f"{output}:single", bundle],
        capture_output=True, text=True,
    )
    assert unpack.returncode == 0, unpack.stderr
    assert (bundle / "rootfs" / "var" / "lib" / "dpkg" / "status").is_file()

    packages = syft_packages(f"oci-dir:{output}")
    assert len(packages) == pushed_single.source.package_count
    found = {package["name"] for package in packages}
    assert found == {package.name for package in pushed_single.source.packages}


def test_multi_platform_default_is_host(pushed_multi, tmp_path):
    output = tmp_path / "layout"

    result = build_layout(
        pushed_multi.store.root, output, image=pushed_multi.image, tag="multi"
    )

    host = host_platform()
    assert result.manifest_digest == pushed_multi.source.manifests[host]
    assert result.requested_digest == pushed_multi.digest
    assert matches(parse_platform(host), result.platform)
    entry = read_index(output)["manifests"][0]
    assert entry["platform"]["architecture"] == parse_platform(host).architecture
    assert_valid_layout(output)
    packages = syft_packages(result.target)
    assert len(packages) == pushed_multi.source.package_count


@pytest.mark.parametrize("requested", ["linux/arm64/v8", "linux/arm64", "linux/amd64"])
def test_multi_platform_explicit_choice(pushed_multi, tmp_path, requested):
    output = tmp_path / "layout"
    offered = {"linux/arm64": "linux/arm64/v8"}.get(requested, requested)

    result = build_layout(
        pushed_multi.store.root, output, digest=pushed_multi.digest, platform=requested
    )

    assert result.manifest_digest == pushed_multi.source.manifests[offered]
    assert result.manifest_digest not in pushed_multi.source.attestations.values()
    inspect = subprocess.run(
        [tool("skopeo"), "inspect", "--raw", f"oci:{output}:latest"],
        capture_output=True, text=True,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["mediaType"].endswith("manifest.v1+json")
    assert_valid_layout(output)


def test_docker_v2_manifest_kept_as_pushed(pushed_docker, tmp_path):
    output = tmp_path / "layout"

    result = build_layout(
        pushed_docker.store.root, output, image=pushed_docker.image, tag="docker"
    )

    entry = read_index(output)["manifests"][0]
    assert entry["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert entry["digest"] == pushed_docker.digest
    stored = blob_file_manifest(pushed_docker.store, pushed_docker.digest)
    placed = output / "blobs" / "sha256" / pushed_docker.digest.split(":")[1]
    assert placed.read_bytes() == stored.read_bytes()
    assert_valid_layout(output)
    packages = syft_packages(result.target)
    assert len(packages) == pushed_docker.source.package_count


def test_full_shape_copied_by_skopeo_all(pushed_multi, tmp_path):
    output = tmp_path / "full"

    result = build_layout(
        pushed_multi.store.root, output, digest=pushed_multi.digest, shape="full"
    )

    entry = read_index(output)["manifests"][0]
    assert entry["digest"] == pushed_multi.digest
    assert entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    every_child = set(pushed_multi.source.manifests.values()) | set(
        pushed_multi.source.attestations.values()
    )
    for digest in every_child:
        assert (output / "blobs" / "sha256" / digest.split(":")[1]).is_file()
    assert result.platform is None
    assert_valid_layout(output)
    copy = subprocess.run(
        [tool("skopeo"), "copy", "--all", f"oci:{output}:latest",
         f"oci:{tmp_path / 'copy'}:x"],
        capture_output=True, text=True,
    )
    assert copy.returncode == 0, copy.stderr


def test_full_shape_platform_filter_says_so(pushed_multi, tmp_path):
    output = tmp_path / "full"

    result = build_layout(
        pushed_multi.store.root, output, digest=pushed_multi.digest,
        shape="full", platform=["linux/arm64"],
    )

    index_digest = read_index(output)["manifests"][0]["digest"]
    assert index_digest != pushed_multi.digest
    assert any("rewritten" in warning for warning in result.warnings)
    kept = json.loads(
        (output / "blobs" / "sha256" / index_digest.split(":")[1]).read_text()
    )["manifests"]
    arm = pushed_multi.source.manifests["linux/arm64/v8"]
    assert [child["digest"] for child in kept] == [
        arm, pushed_multi.source.attestations["linux/arm64/v8"]
    ]
    assert_valid_layout(output)


def test_attestation_never_chosen(pushed_multi, tmp_path):
    output = tmp_path / "layout"

    code, summary = run_json(
        "build", "--store", pushed_multi.store.root, "--digest", pushed_multi.digest,
        "--platform", "unknown/unknown", "--output", output,
    )

    assert code == 3
    assert "linux/amd64" in summary["error"]["message"]
    assert "linux/arm64/v8" in summary["error"]["message"]
    assert not output.exists()


def test_attestation_by_digest_rejected(pushed_multi, tmp_path):
    attestation = pushed_multi.source.attestations["linux/arm64/v8"]
    output = tmp_path / "layout"

    code, summary = run_json(
        "build", "--store", pushed_multi.store.root, "--digest", attestation,
        "--output", output,
    )

    assert code == 1, summary
    assert summary["error"]["type"] == "NotAnImageError"
    assert attestation in summary["error"]["message"]
    assert "not a container image" in summary["error"]["message"]
    assert not output.exists()


def test_digest_with_matching_tag_builds(pushed_single, tmp_path):
    code, summary = run_json(
        "build", "--store", pushed_single.store.root, "--digest", pushed_single.digest,
        "--image", pushed_single.image, "--tag", pushed_single.tag,
        "--output", tmp_path / "layout",
    )

    assert code == 0, summary
    assert summary["ref_name"] == pushed_single.tag


@pytest.mark.parametrize("selector", ["other tag", "other image"])
def test_digest_contradicted_by_name_exit_3(pushed_multi, tmp_path, selector):
    """--digest with an --image or --tag that names something else is an error."""
    child = pushed_multi.source.manifests["linux/arm64/v8"]
    names = (
        ["--image", pushed_multi.image, "--tag", pushed_multi.tag]
        if selector == "other tag"
        else ["--image", "demo/elsewhere"]
    )
    output = tmp_path / "layout"

    code, summary = run_json(
        "build", "--store", pushed_multi.store.root, "--digest", child, *names,
        "--output", output,
    )

    assert code == 3, summary
    assert child in summary["error"]["message"]
    assert names[1] in summary["error"]["message"]
    assert not output.exists()


def test_platform_not_offered_lists_offers(pushed_multi, tmp_path):
    with pytest.raises(NotFoundError) as caught:
        build_layout(
            pushed_multi.store.root, tmp_path / "out",
            digest=pushed_multi.digest, platform="linux/s390x",
        )
    assert "linux/s390x" in str(caught.value)
    assert "linux/arm64/v8" in str(caught.value)


# Failures: exit codes and no debris


def test_corrupted_blob_exits_5_and_leaves_nothing(pushed_single, out_dir):
    store = pushed_single.store
    layer = pushed_single_layers(store, pushed_single.digest)[0]
    path = blob_file(store, layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = snapshot_tree(store.root)
    output = out_dir / "layout"

    code, summary = run_json(
        "build", "--store", store.root, "--digest", pushed_single.digest,
        "--output", output,
    )

    assert code == 5
    assert summary["error"]["type"] == "DigestMismatchError"
    assert layer in summary["error"]["message"]
    assert not output.exists()
    assert siblings(output) == []
    assert snapshot_tree(store.root) == before


@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_corrupted_blob_raises_digest_mismatch(pushed_single, out_dir, link):
    store = pushed_single.store
    layer = pushed_single_layers(store, pushed_single.digest)[-1]
    path = blob_file(store, layer)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(DigestMismatchError) as caught:
        build_layout(store.root, out_dir / "layout", digest=pushed_single.digest,
                     link=link)

    assert caught.value.expected == layer
    assert caught.value.path == str(path)
    assert list(out_dir.iterdir()) == []


def test_missing_blob_rows_exit_4(pushed_single, tmp_path):
    store = pushed_single.store
    with database(store) as db:
        db.execute(
            "DELETE FROM manifest_blob_refs WHERE manifest_digest = ?",
            (pushed_single.digest,),
        )
    output = tmp_path / "layout"

    code, summary = run_json(
        "build", "--store", store.root, "--digest", pushed_single.digest,
        "--output", output,
    )

    assert code == 4
    assert summary["error"]["reason"] == "no-blob-rows"
    assert pushed_single.digest in summary["error"]["message"]
    assert not output.exists()


def test_one_blob_row_missing_exit_4(pushed_single, tmp_path):
    store = pushed_single.store
    layer = pushed_single_layers(store, pushed_single.digest)[0]
    with database(store) as db:
        db.execute("DELETE FROM oci_blobs WHERE digest = ?", (layer,))

    with pytest.raises(MetadataMissingError) as caught:
        build_layout(store.root, tmp_path / "out", digest=pushed_single.digest)

    assert caught.value.reason == "blob-row-missing"
    assert caught.value.digest == layer
    assert caught.value.manifest == pushed_single.digest


def test_unknown_digest_exit_3(pushed_single, tmp_path):
    unknown = "sha256:" + "0" * 64
    result = run_cli(
        "build", "--store", pushed_single.store.root, "--digest", unknown,
        "--output", tmp_path / "layout",
    )
    assert result.returncode == 3
    assert unknown in result.stderr


@pytest.mark.parametrize(
    "digest",
    ["sha256:ABC", "sha256:" + "A" * 64, "md5:" + "0" * 32, "", "sha256:"],
)
def test_malformed_digest_exit_2(pushed_single, tmp_path, digest):
    result = run_cli(
        "build", "--store", pushed_single.store.root, "--digest", digest,
        "--output", tmp_path / "layout",
    )
    assert result.returncode == 2
    assert repr(digest) in result.stderr


def test_existing_output_rejected(pushed_single, tmp_path):
    output = tmp_path / "layout"
    output.mkdir()
    (output / "keep").write_text("mine")

    result = run_cli(
        "build", "--store", pushed_single.store.root, "--digest",
        pushed_single.digest, "--output", output,
    )

    assert result.returncode == 1
    assert str(output) in result.stderr
    assert (output / "keep").read_text() == "mine"


# Placement


def test_copy_placement_is_private_and_read_only(pushed_single, tmp_path):
    output = tmp_path / "layout"

    result = build_layout(
        pushed_single.store.root, output, digest=pushed_single.digest, link="copy"
    )

    assert {p.method for p in result.placements} == {"copy"}
    for blob in (output / "blobs" / "sha256").iterdir():
        info = blob.stat()
        assert info.st_nlink == 1
        assert info.st_mode & 0o222 == 0
    assert result.warnings == []
    assert_valid_layout(output)


def test_hardlink_placement_shares_inodes(pushed_single, tmp_path):
    output = tmp_path / "layout"
    store = pushed_single.store

    result = build_layout(store.root, output, digest=pushed_single.digest,
                          link="hardlink")

    for placement in result.placements:
        placed = output / "blobs" / "sha256" / placement.digest.split(":")[1]
        assert placed.stat().st_ino == blob_file(store, placement.digest).stat().st_ino
    assert any("writable in the store" in warning for warning in result.warnings)


def test_temporary_layout_removed_on_exit(pushed_single):
    with temporary_layout(pushed_single.store.root,
                          digest=pushed_single.digest) as built:
        workspace = built.output.parent
        assert (built.output / "index.json").is_file()
        assert ":" not in str(built.output) and "@" not in str(built.output)
    assert not workspace.exists()


def test_temporary_layout_removed_on_error(pushed_single, tmp_path):
    workspace = tmp_path / "work"
    workspace.mkdir()
    with pytest.raises(RuntimeError):
        with temporary_layout(pushed_single.store.root, workspace=workspace,
                              digest=pushed_single.digest):
            raise RuntimeError("scanner crashed")
    assert list(workspace.iterdir()) == []


def test_self_check_failure_leaves_nothing(pushed_single, out_dir, monkeypatch):
    import ocilayout.check as check
    from ocilayout import IntegrityError

    real_check = check.check_layout

    def check_with_stray_file(path, deep=False):
        (Path(path) / "blobs" / "sha256" / "stray.tmp").write_bytes(b"x")
        return real_check(path, deep)

    monkeypatch.setattr(check, "check_layout", check_with_stray_file)
    output = out_dir / "layout"

    with pytest.raises(IntegrityError, match="self-check") as caught:
        build_layout(pushed_single.store.root, output, digest=pushed_single.digest)

    assert "stray" in str(caught.value)
    assert list(out_dir.iterdir()) == []


def test_import_does_not_load_cli_stack():
    code = (
        "import sys, ocilayout; "
        "heavy = [m for m in ('typer', 'click', 'rich', 'cryptography', 'zstandard') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == ""


def pushed_single_layers(store, manifest_digest: str) -> list[str]:
    with database(store) as db:
        rows = db.execute(
            "SELECT blob_digest FROM manifest_blob_refs "
            "WHERE manifest_digest = ? AND kind = 'layer' ORDER BY blob_digest",
            (manifest_digest,),
        ).fetchall()
    assert rows, f"no layer rows for {manifest_digest}"
    return [row[0] for row in rows]


# Other sources on the command line


def test_cli_reads_sqlite_database_url(pushed_single, tmp_path):
    database = pushed_single.store.root / "metadata.sqlite3"

    code, summary = run_json(
        "build", "--db", f"sqlite://{database}", "--image", pushed_single.image,
        "--tag", pushed_single.tag, "--output", tmp_path / "layout", "--no-cache",
    )

    assert code == 0, summary
    assert summary["manifest_digest"] == pushed_single.digest


def test_cli_reads_oci_layout_source(real_image_single, tmp_path):
    code, summary = run_json(
        "build", "--layout", real_image_single.layout, "--image", "any",
        "--tag", real_image_single.ref, "--output", tmp_path / "layout",
        "--no-cache",
    )

    assert code == 0, summary
    assert summary["manifest_digest"] == real_image_single.digest
    packages = syft_packages(summary["target"])
    assert len(packages) == real_image_single.package_count


def test_cli_layout_source_wrong_index_size(real_image_single, tmp_path):
    """An index.json descriptor whose size is not its blob's is an integrity error."""
    source = tmp_path / "source"
    shutil.copytree(real_image_single.layout, source)
    index = json.loads((source / "index.json").read_text())
    index["manifests"][0]["size"] += 1
    (source / "index.json").write_text(json.dumps(index))

    code, summary = run_json(
        "build", "--layout", source, "--digest", real_image_single.digest,
        "--output", tmp_path / "layout", "--no-cache",
    )

    assert code == 5, summary
    assert summary["error"]["type"] == "SizeMismatchError"
    assert real_image_single.digest in summary["error"]["message"]
    assert not (tmp_path / "layout").exists()


def test_cli_without_source_is_usage_error(tmp_path):
    result = run_cli("build", "--digest", "sha256:" + "0" * 64, "--output",
                     tmp_path / "layout")

    assert result.returncode == 2
    assert "--store, --db, --registry-root or --layout" in result.stderr


def test_cli_unreachable_database_exits_4(tmp_path):
    code, summary = run_json(
        # A socket folder without a server: the connection fails at once.
        "build", "--db", f"postgresql://nobody@/none?host={tmp_path}",
        "--digest", "sha256:" + "0" * 64, "--output", tmp_path / "layout",
    )

    assert code == 4
    assert summary["error"]["reason"] == "database-unavailable"
    assert not (tmp_path / "layout").exists()


def test_cli_version_option():
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == ocilayout.__version__


def test_cli_usage_error_as_json(tmp_path):
    """With --json, even a missing option is reported as a JSON document."""
    code, summary = run_json("build", "--store", tmp_path, "--digest", "sha256:" + "0" * 64)

    assert code == 2
    assert summary["ok"] is False
    assert summary["error"]["type"] == "UsageError"
    assert "--output" in summary["error"]["message"]


def test_cli_missing_store_directory_exit_2(tmp_path):
    missing = tmp_path / "no-such-store"
    code, summary = run_json(
        "build", "--store", missing, "--digest", "sha256:" + "0" * 64,
        "--output", tmp_path / "layout",
    )

    assert code == 2, summary
    assert str(missing) in summary["error"]["message"]
    assert "--store" in summary["error"]["message"]


def test_cli_platform_not_offered_candidates(pushed_multi, tmp_path):
    code, summary = run_json(
        "build", "--store", pushed_multi.store.root, "--digest", pushed_multi.digest,
        "--platform", "linux/s390x", "--output", tmp_path / "layout",
    )

    assert code == 3
    assert summary["error"]["type"] == "PlatformNotFoundError"
    assert summary["error"]["candidates"] == ["linux/amd64", "linux/arm64/v8"]
    assert "--platform" in summary["error"]["hint"]


def test_cli_sqlite_url_of_directory_exit_2(pushed_single, tmp_path):
    root = pushed_single.store.root
    code, summary = run_json(
        "build", "--db", f"sqlite://{root}", "--digest", pushed_single.digest,
        "--output", tmp_path / "layout",
    )

    assert code == 2, summary
    assert "is a directory" in summary["error"]["message"]
    assert "--store" in summary["error"]["message"]
