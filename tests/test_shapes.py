"""Every image shape of spec-fixtures/shapes pushed, built and read back.

Each shape is pushed into its own repository of one session-wide store (the
shapes share content, so one repository would blur their differences), built
with ocilayout, and read by the real syft (scan shape) and skopeo 1.9 (full
shape). Expected digests come from walking the source layout directly, never
from ocilayout, so the two are independent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.imagegen import host_platform
from emulator.push import push
from emulator.store import EmulatorStore, new_id, utc_now
from ocilayout import build_layout
from ocilayout.errors import (
    NotAnImageError,
    NotFoundError,
    UnsupportedManifestError,
)
from ocilayout.manifest import Platform

from .helpers import ROOT, run_json, syft_packages, tool

SHAPES_DIR = ROOT / "spec-fixtures" / "shapes"
REF = "latest"
REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
REFERRERS = ("sbom", "signature")
WINDOWS_2019 = "windows/amd64 10.0.17763.5458"
WINDOWS_2022 = "windows/amd64 10.0.20348.2340"

# The child a build without --platform chooses among linux/amd64 and
# linux/arm64/v8: the host's, or on any other host the first linux child.
HOST = host_platform()
HOST_CHILD = HOST if HOST in ("linux/amd64", "linux/arm64/v8") else "linux/amd64"


# Reading the source layouts, independently of ocilayout


def source_layout(name: str) -> Path:
    return SHAPES_DIR / name / "layout"


def source_entry(name: str, ref: str = REF) -> dict:
    index = json.loads((source_layout(name) / "index.json").read_text())
    found = [
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get(REF_NAME) == ref
    ]
    assert len(found) == 1, f"{name} has {len(found)} entries named {ref}"
    return found[0]


def source_blob(name: str, digest: str) -> bytes:
    algorithm, _, encoded = digest.partition(":")
    return (source_layout(name) / "blobs" / algorithm / encoded).read_bytes()


def platform_text(platform: dict | None) -> str | None:
    if platform is None:
        return None
    text = f"{platform['os']}/{platform['architecture']}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    if platform.get("os.version"):
        text += f" {platform['os.version']}"
    return text


def source_images(name: str) -> list[tuple[str | None, dict]]:
    """List (platform text, descriptor) of every manifest under the top, in order."""
    found = []
    pending = [source_entry(name)]
    while pending:
        descriptor = pending.pop(0)
        if descriptor["mediaType"] not in INDEX_TYPES:
            found.append((platform_text(descriptor.get("platform")), descriptor))
            continue
        index = json.loads(source_blob(name, descriptor["digest"]))
        pending[:0] = index["manifests"]
    return found


def source_digest(name: str, platform: str | None) -> str:
    """Return the digest the scan build must choose for ``platform``.

    None means the shape's top entry is itself the image manifest.
    """
    if platform is None:
        return source_entry(name)["digest"]
    found = [d["digest"] for text, d in source_images(name) if text == platform]
    assert found, f"{name} has no image for {platform}"
    return found[0]


# The store


@dataclass(frozen=True)
class ShapeStore:
    """A store holding every shape, each in a repository named after it."""

    store: EmulatorStore
    digests: dict[str, str]
    referrers: dict[str, str]

    @property
    def root(self) -> Path:
        return self.store.root


def record_as_registry(store: EmulatorStore, name: str) -> str:
    """Store a schema 1 manifest the way a registry records it.

    The emulator's push takes only schema 2 and OCI, so this writes the
    manifest body, its fsLayers blobs and the rows (oci_blobs,
    manifest_blob_refs, artifacts, oci_tags) directly.
    """
    repository = store.ensure_repository(name)
    entry = source_entry(name)
    digest = entry["digest"]
    body = source_blob(name, digest)
    manifest = json.loads(body)
    layers = sorted({layer["blobSum"] for layer in manifest["fsLayers"]})

    store.write_object(repository, f"oci-manifests/{digest}", body)
    for layer in layers:
        store.write_object(repository, f"oci-blobs/{layer}", source_blob(name, layer))

    image = f"shapes/{name}"
    now = utc_now()
    with store.transaction() as db:
        for layer in layers:
            size = len(source_blob(name, layer))
            db.execute(
                "INSERT INTO oci_blobs (id, repository_id, digest, size_bytes,"
                " storage_key, pending_delete_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (new_id(), repository.id, layer, size, f"oci-blobs/{layer}", now),
            )
            db.execute(
                "INSERT INTO manifest_blob_refs (id, repository_id, manifest_digest,"
                " blob_digest, kind, created_at) VALUES (?, ?, ?, ?, 'layer', ?)",
                (new_id(), repository.id, digest, layer, now),
            )
        for reference in (REF, digest):
            db.execute(
                "INSERT INTO artifacts (id, repository_id, path, name, version,"
                " size_bytes, checksum_sha256, content_type, storage_key,"
                " is_deleted, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    new_id(),
                    repository.id,
                    f"v2/{image}/manifests/{reference}",
                    f"{image}:{reference}",
                    reference,
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                    entry["mediaType"],
                    f"oci-manifests/{digest}",
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO oci_tags (id, repository_id, name, tag, manifest_digest,"
                " manifest_content_type, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_id(),
                    repository.id,
                    image,
                    reference,
                    digest,
                    entry["mediaType"],
                    now,
                    now,
                ),
            )
    return digest


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> ShapeStore:
    """Push every shape of the corpus into one fresh store, read-only afterwards."""
    store = EmulatorStore.init(tmp_path_factory.mktemp("shapes") / "store")
    digests = {}
    for name in SHAPE_NAMES:
        if name == "schema1":
            digests[name] = record_as_registry(store, name)
            continue
        spec = f"{source_layout(name)}:{REF}"
        digests[name] = push(store, name, f"shapes/{name}", REF, spec)
    referrers = {
        ref: push(
            store,
            "referrer",
            "shapes/referrer",
            None,
            f"{source_layout('referrer')}:{ref}",
        )
        for ref in REFERRERS
    }
    return ShapeStore(store, digests, referrers)


def build(shapes: ShapeStore, name: str, output: Path, **options):
    return build_layout(
        shapes.root, output, digest=shapes.digests[name], repo=name, **options
    )


def build_cli(shapes: ShapeStore, name: str, output: Path, *args: str):
    return run_json(
        "build",
        "--store",
        shapes.root,
        "--repo",
        name,
        "--digest",
        shapes.digests[name],
        "--output",
        output,
        *args,
    )


def layout_index(path: Path) -> dict:
    return json.loads((path / "index.json").read_text())


def layout_blob(path: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return path / "blobs" / algorithm / encoded


def stored_manifests(shapes: ShapeStore, repo_key: str) -> set[str]:
    with closing(shapes.store.connect()) as db:
        rows = db.execute(
            "SELECT a.storage_key FROM artifacts a JOIN repositories r"
            " ON r.id = a.repository_id WHERE r.key = ? AND a.is_deleted = 0",
            (repo_key,),
        ).fetchall()
    return {row[0].removeprefix("oci-manifests/") for row in rows}


def run_tool(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    return subprocess.run(
        [tool(command[0]), *command[1:]],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return run_tool("skopeo", "--insecure-policy", *args)


def skopeo_raw_manifest(layout: Path) -> bytes:
    """Return the bytes `skopeo inspect --raw` prints for the layout's ref."""
    result = subprocess.run(
        [tool("skopeo"), "inspect", "--raw", f"oci:{layout}:{REF}"],
        check=False,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


# Expected outcomes


@dataclass(frozen=True)
class Buildable:
    """A shape whose scan build succeeds and which syft then reads."""

    name: str
    request: str | None  # --platform of the scan build; None: the default
    chooses: str | None  # platform of the source image chosen; None: the top
    packages: frozenset[str]


BOTH = frozenset({"netbase", "six"})
SCAN_BUILDS = [
    Buildable("oci-manifest", None, None, BOTH),
    Buildable("docker-v2", None, None, BOTH),
    Buildable("oci-index-attestations", None, HOST_CHILD, BOTH),
    Buildable("oci-index-attestations", "linux/arm64", "linux/arm64/v8", BOTH),
    Buildable("buildx-nested", None, "linux/amd64", BOTH),
    Buildable("docker-manifest-list", None, HOST_CHILD, BOTH),
    Buildable("docker-manifest-list", "linux/arm64", "linux/arm64/v8", BOTH),
    Buildable("index-of-indexes", "linux/amd64", "linux/amd64", BOTH),
    Buildable("index-of-indexes", "linux/arm64/v8", "linux/arm64/v8", BOTH),
    Buildable("windows-os-version", None, WINDOWS_2019, frozenset({"six"})),
    Buildable("arm-variants", "linux/arm", "linux/arm/v7", BOTH),
    Buildable("arm-bare", "linux/arm64/v8", "linux/arm64", BOTH),
    Buildable("zstd-layers", None, None, BOTH),
    Buildable("uncompressed-layers", None, None, frozenset({"netbase"})),
    Buildable("foreign-layer-present", None, None, frozenset({"six"})),
    Buildable("referrer", None, None, BOTH),
]

# How skopeo 1.9.3 reads each full layout, by kind:
# - copy: `skopeo copy --all --preserve-digests` copies it unchanged. Without
#   --preserve-digests skopeo gzips plain tar layers and changes digests.
# - docker: skopeo skips index.json entries with Docker media types, so it
#   finds no image for the ref.
# - nested: skopeo inspects the top index but cannot copy an inner index.
# - sha512: skopeo reads the manifest, but its copy hashes blobs with sha256.
# - none: skopeo is not run, because it would fetch the absent foreign layer
#   from the layer's urls.
FULL_BUILDS = {
    "oci-manifest": "copy",
    "docker-v2": "docker",
    "oci-index-attestations": "copy",
    "buildx-nested": "nested",
    "docker-manifest-list": "docker",
    "index-of-indexes": "nested",
    "windows-os-version": "docker",
    "arm-variants": "copy",
    "arm-bare": "copy",
    "zstd-layers": "copy",
    "uncompressed-layers": "copy",
    "foreign-layer-present": "docker",
    "foreign-layer-absent": "none",
    "helm-chart": "copy",
    "empty-config-artifact": "copy",
    "attestations-only-index": "copy",
    "referrer": "copy",
    "sha512-image": "sha512",
}

# (shape, --shape, exit code, error class, phrase in the message)
FAILURES = [
    ("helm-chart", "scan", 1, NotAnImageError, "not a container image"),
    ("empty-config-artifact", "scan", 1, NotAnImageError, "not a container image"),
    ("schema1", "scan", 1, UnsupportedManifestError, "schema 1"),
    ("schema1", "full", 1, UnsupportedManifestError, "schema 1"),
    ("attestations-only-index", "scan", 3, NotFoundError, "no runnable child"),
]

SHAPE_NAMES = [
    "oci-manifest",
    "docker-v2",
    "oci-index-attestations",
    "buildx-nested",
    "docker-manifest-list",
    "index-of-indexes",
    "windows-os-version",
    "arm-variants",
    "arm-bare",
    "zstd-layers",
    "uncompressed-layers",
    "foreign-layer-present",
    "foreign-layer-absent",
    "helm-chart",
    "empty-config-artifact",
    "schema1",
    "attestations-only-index",
    "referrer",
    "sha512-image",
]


def case_id(case: Buildable) -> str:
    return f"{case.name}-{case.request or 'default'}"


# The corpus itself


def load_generator():
    path = SHAPES_DIR / "generate.py"
    spec = importlib.util.spec_from_file_location("shapes_generate", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_generated_shape_has_a_case():
    generated = [shape.name for shape in load_generator().SHAPES]
    on_disk = sorted(p.name for p in SHAPES_DIR.iterdir() if p.is_dir())

    assert sorted(generated) == sorted(SHAPE_NAMES)
    assert on_disk == sorted(SHAPE_NAMES)
    assert set(FULL_BUILDS) | {"schema1"} == set(SHAPE_NAMES)


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_shape_folder_is_documented_and_small(name):
    readme = (SHAPES_DIR / name / "README.md").read_text()
    files = [p for p in source_layout(name).rglob("*") if p.is_file()]

    assert "Expected:" in readme
    assert (source_layout(name) / "oci-layout").is_file()
    assert sum(p.stat().st_size for p in files) < 100_000


def test_generator_reproduces_corpus(tmp_path):
    generator = SHAPES_DIR / "generate.py"

    result = subprocess.run(
        [sys.executable, str(generator), "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    for name in SHAPE_NAMES:
        written = sorted(
            p.relative_to(tmp_path / name)
            for p in (tmp_path / name).rglob("*")
            if p.is_file()
        )
        committed = sorted(
            p.relative_to(SHAPES_DIR / name)
            for p in (SHAPES_DIR / name).rglob("*")
            if p.is_file()
        )
        assert written == committed, name
        for relative in written:
            new = (tmp_path / name / relative).read_bytes()
            assert new == (SHAPES_DIR / name / relative).read_bytes(), relative


# Scan shape: builds, the chosen digest, syft


@pytest.mark.parametrize("case", SCAN_BUILDS, ids=case_id)
def test_scan_build_chooses_stored_manifest(shapes, tmp_path, case):
    output = tmp_path / "layout"
    args = ["--platform", case.request] if case.request else []
    expected = source_digest(case.name, case.chooses)

    code, summary = build_cli(shapes, case.name, output, *args)

    assert code == 0, summary
    assert summary["manifest_digest"] == expected
    assert summary["requested_digest"] == shapes.digests[case.name]
    assert expected in stored_manifests(shapes, case.name)
    entries = layout_index(output)["manifests"]
    assert [entry["digest"] for entry in entries] == [expected]
    assert entries[0]["annotations"][REF_NAME] == REF
    body = layout_blob(output, expected).read_bytes()
    assert body == source_blob(case.name, expected)


@pytest.mark.consumers
@pytest.mark.parametrize("case", SCAN_BUILDS, ids=case_id)
def test_scan_layout_read_by_syft(shapes, tmp_path, case):
    output = tmp_path / "layout"

    result = build(shapes, case.name, output, platform=case.request)

    names = {package["name"] for package in syft_packages(result.target)}
    assert names >= case.packages


# Full shape: builds, digests, skopeo


@pytest.mark.parametrize("name", sorted(FULL_BUILDS))
def test_full_build_keeps_stored_top(shapes, tmp_path, name):
    output = tmp_path / "full"
    top = source_entry(name)

    result = build(shapes, name, output, shape="full")

    entry = layout_index(output)["manifests"][0]
    assert result.manifest_digest == shapes.digests[name]
    assert entry["digest"] == top["digest"]
    assert entry["mediaType"] == top["mediaType"]
    for _, image in source_images(name):
        assert layout_blob(output, image["digest"]).is_file(), image["digest"]


@pytest.mark.consumers
@pytest.mark.parametrize(
    "name", sorted(n for n, kind in FULL_BUILDS.items() if kind == "copy")
)
def test_full_layout_copied_by_skopeo(shapes, tmp_path, name):
    output = tmp_path / "full"
    copy = tmp_path / "copy"
    build(shapes, name, output, shape="full")

    result = skopeo(
        "copy", "--all", "--preserve-digests", f"oci:{output}:{REF}", f"oci:{copy}:x"
    )

    assert result.returncode == 0, result.stderr
    assert layout_index(copy)["manifests"][0]["digest"] == shapes.digests[name]


@pytest.mark.consumers
@pytest.mark.parametrize(
    "name", sorted(n for n, kind in FULL_BUILDS.items() if kind == "docker")
)
def test_skopeo_skips_docker_media_types(shapes, tmp_path, name):
    output = tmp_path / "full"
    build(shapes, name, output, shape="full")

    result = skopeo("inspect", "--raw", f"oci:{output}:{REF}")

    assert result.returncode != 0
    assert "no descriptor found for reference" in result.stderr


@pytest.mark.consumers
@pytest.mark.parametrize(
    "name", sorted(n for n, kind in FULL_BUILDS.items() if kind == "nested")
)
def test_skopeo_reads_nested_index_top(shapes, tmp_path, name):
    output = tmp_path / "full"
    build(shapes, name, output, shape="full")

    raw = skopeo_raw_manifest(output)
    copy = skopeo("copy", "--all", f"oci:{output}:{REF}", f"oci:{tmp_path / 'c'}:x")

    assert "sha256:" + hashlib.sha256(raw).hexdigest() == shapes.digests[name]
    assert copy.returncode != 0
    assert "manifest list instead of a manifest" in copy.stderr


# Failures: exit code, error class, message


@pytest.mark.parametrize("name, shape, code, error, phrase", FAILURES)
def test_unbuildable_shape_exit_code(
    shapes, tmp_path, name, shape, code, error, phrase
):
    output = tmp_path / "layout"

    status, summary = build_cli(shapes, name, output, "--shape", shape)

    assert status == code
    assert summary["error"]["type"] == error.__name__
    assert phrase in summary["error"]["message"]
    assert shapes.digests[name] in summary["error"]["message"]
    assert not output.exists()


@pytest.mark.parametrize("name, shape, code, error, phrase", FAILURES)
def test_unbuildable_shape_raises(shapes, tmp_path, name, shape, code, error, phrase):
    with pytest.raises(error, match=phrase) as caught:
        build(shapes, name, tmp_path / "layout", shape=shape)

    assert caught.value.exit_code == code
    assert list(tmp_path.iterdir()) == []


# Platform matching


@dataclass(frozen=True)
class Choice:
    name: str
    request: str | Platform
    chooses: str


CHOICES = [
    Choice("arm-variants", "linux/arm", "linux/arm/v7"),
    Choice("arm-variants", "linux/arm/v7", "linux/arm/v7"),
    Choice("arm-variants", "linux/arm/v6", "linux/arm/v6"),
    Choice("arm-variants", "linux/arm64", "linux/arm64/v8"),
    Choice("arm-variants", "linux/arm64/v8", "linux/arm64/v8"),
    Choice("arm-bare", "linux/arm", "linux/arm"),
    Choice("arm-bare", "linux/arm/v7", "linux/arm"),
    Choice("arm-bare", "linux/arm64", "linux/arm64"),
    Choice("arm-bare", "linux/arm64/v8", "linux/arm64"),
    Choice("docker-manifest-list", "linux/arm64", "linux/arm64/v8"),
    Choice("index-of-indexes", "linux/arm64", "linux/arm64/v8"),
    Choice("index-of-indexes", "linux/amd64", "linux/amd64"),
    Choice("buildx-nested", "linux/amd64", "linux/amd64"),
    Choice(
        "windows-os-version",
        Platform("windows", "amd64", os_version="10.0.20348.2340"),
        WINDOWS_2022,
    ),
    Choice(
        "windows-os-version",
        Platform("windows", "amd64", os_version="10.0.17763"),
        WINDOWS_2019,
    ),
    # Both os.versions start with 10.0, so the first child in index order wins.
    Choice(
        "windows-os-version",
        Platform("windows", "amd64", os_version="10.0"),
        WINDOWS_2019,
    ),
    Choice("windows-os-version", "windows/amd64", WINDOWS_2019),
]


@pytest.mark.parametrize("case", CHOICES, ids=lambda c: f"{c.name}-{c.request}")
def test_platform_request_chooses_child(shapes, tmp_path, case):
    result = build(shapes, case.name, tmp_path / "layout", platform=case.request)

    assert result.manifest_digest == source_digest(case.name, case.chooses)
    assert platform_text(result.platform.to_json()) == case.chooses


def test_cli_os_version_chooses_windows_child(shapes, tmp_path):
    output = tmp_path / "layout"

    code, summary = build_cli(
        shapes,
        "windows-os-version",
        output,
        "--platform",
        "windows/amd64",
        "--os-version",
        "10.0.20348",
    )

    assert code == 0, summary
    assert summary["manifest_digest"] == source_digest(
        "windows-os-version", WINDOWS_2022
    )
    assert summary["platform"]["os.version"] == "10.0.20348.2340"


NO_MATCH = [
    ("arm-bare", "linux/arm/v6", ["linux/arm", "linux/arm64"]),
    ("oci-index-attestations", "unknown/unknown", ["linux/amd64", "linux/arm64/v8"]),
    ("oci-index-attestations", "linux/s390x", ["linux/amd64", "linux/arm64/v8"]),
    (
        "windows-os-version",
        Platform("windows", "amd64", os_version="10.0.14393"),
        ["10.0.17763.5458", "10.0.20348.2340"],
    ),
    pytest.param(
        "buildx-nested",
        "linux/arm64",
        ["linux/amd64"],
    ),
    pytest.param(
        "index-of-indexes",
        "linux/s390x",
        ["linux/amd64", "linux/arm64/v8"],
    ),
]


@pytest.mark.parametrize("name, request_, offered", NO_MATCH)
def test_unmatched_platform_lists_offers(shapes, tmp_path, name, request_, offered):
    output = tmp_path / "layout"

    with pytest.raises(NotFoundError) as caught:
        build(shapes, name, output, platform=request_)

    message = str(caught.value)
    for platform in offered:
        assert platform in message
    assert "unknown/unknown" not in message.split("offers:")[-1]
    assert not output.exists()


def test_default_prefers_host_across_nested_indexes(shapes, tmp_path):
    result = build(shapes, "index-of-indexes", tmp_path / "layout")

    assert result.manifest_digest == source_digest("index-of-indexes", HOST_CHILD)


@pytest.mark.parametrize(
    "name", ["oci-index-attestations", "buildx-nested", "index-of-indexes"]
)
def test_attestation_never_chosen(shapes, tmp_path, name):
    attestations = {
        descriptor["digest"]
        for text, descriptor in source_images(name)
        if text == "unknown/unknown"
    }

    result = build(shapes, name, tmp_path / "layout")

    assert attestations
    assert result.manifest_digest not in attestations


def test_full_platform_filter_keeps_nested_index(shapes, tmp_path):
    output = tmp_path / "full"

    result = build(
        shapes, "index-of-indexes", output, shape="full", platform="linux/amd64"
    )

    top = json.loads(layout_blob(output, result.manifest_digest).read_bytes())
    assert len(top["manifests"]) == 1
    chosen = source_digest("index-of-indexes", "linux/amd64")
    assert layout_blob(output, chosen).is_file()


# Foreign layers


def foreign_layer(name: str) -> dict:
    manifest = json.loads(source_blob(name, source_entry(name)["digest"]))
    layer = manifest["layers"][0]
    assert layer["mediaType"].endswith("foreign.diff.tar.gzip")
    assert layer["urls"]
    return layer


def test_foreign_layer_placed_when_stored(shapes, tmp_path):
    output = tmp_path / "layout"
    layer = foreign_layer("foreign-layer-present")

    result = build(shapes, "foreign-layer-present", output)

    assert layer["digest"] in {placement.digest for placement in result.placements}
    assert layout_blob(output, layer["digest"]).is_file()
    assert result.skipped == []


def test_foreign_layer_left_out_when_absent(shapes, tmp_path):
    output = tmp_path / "layout"
    layer = foreign_layer("foreign-layer-absent")

    code, summary = build_cli(shapes, "foreign-layer-absent", output)

    assert code == 0, summary
    assert summary["skipped_non_distributable"] == [layer["digest"]]
    assert any(layer["digest"] in warning for warning in summary["warnings"])
    assert not layout_blob(output, layer["digest"]).exists()
    assert summary["manifest_digest"] == shapes.digests["foreign-layer-present"]


@pytest.mark.consumers
def test_foreign_layer_absent_unreadable_by_syft(shapes, tmp_path):
    # syft 1.18 opens every layer of the manifest, so a layout without the
    # foreign layer's blob cannot be scanned; the scan needs the registry.
    result = build(shapes, "foreign-layer-absent", tmp_path / "layout")

    scan = run_tool("syft", "scan", result.target, "-o", "json")

    assert scan.returncode != 0
    assert "file does not exist" in scan.stderr


# Referrers


def test_referrer_rows_recorded(shapes):
    image = shapes.digests["referrer"]

    with closing(shapes.store.connect()) as db:
        rows = db.execute(
            "SELECT manifest_digest, artifact_type FROM oci_manifest_subjects"
            " WHERE subject_digest = ? ORDER BY artifact_type",
            (image,),
        ).fetchall()

    assert [tuple(row) for row in rows] == sorted(
        [
            (shapes.referrers["sbom"], "application/spdx+json"),
            (shapes.referrers["signature"], "application/vnd.cncf.notary.signature"),
        ],
        key=lambda row: row[1],
    )


@pytest.mark.consumers
def test_full_referrers_copied_by_skopeo(shapes, tmp_path):
    output = tmp_path / "full"

    result = build(shapes, "referrer", output, shape="full", referrers=True)

    entries = layout_index(output)["manifests"]
    assert [e["digest"] for e in entries] == [
        shapes.digests["referrer"],
        *sorted(shapes.referrers.values()),
    ]
    assert sorted(result.referrers) == sorted(shapes.referrers.values())
    assert {e.get("artifactType") for e in entries[1:]} == {
        "application/spdx+json",
        "application/vnd.cncf.notary.signature",
    }
    copy = skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        f"oci:{output}:{REF}",
        f"oci:{tmp_path / 'c'}:x",
    )
    assert copy.returncode == 0, copy.stderr


@pytest.mark.consumers
def test_scan_referrers_read_by_syft(shapes, tmp_path):
    output = tmp_path / "layout"
    result = build(shapes, "referrer", output, referrers=True)

    assert len(json.loads((output / "index.json").read_text())["manifests"]) == 1
    assert sorted(result.referrers) == sorted(shapes.referrers.values())
    for digest in result.referrers:
        assert layout_blob(output, digest).is_file()
    names = {package["name"] for package in syft_packages(result.target)}
    assert names >= BOTH


@pytest.mark.parametrize("ref", REFERRERS)
def test_referrer_itself_not_an_image(shapes, tmp_path, ref):
    digest = shapes.referrers[ref]

    with pytest.raises(NotAnImageError, match="not a container image"):
        build_layout(shapes.root, tmp_path / "layout", digest=digest, repo="referrer")


# sha512


def test_sha512_layout_keeps_sha512_digests(shapes, tmp_path):
    output = tmp_path / "layout"

    result = build(shapes, "sha512-image", output)

    assert result.manifest_digest.startswith("sha512:")
    assert result.manifest_digest == source_entry("sha512-image")["digest"]
    assert {p.parent.name for p in (output / "blobs").glob("*/*")} == {"sha512"}
    raw = skopeo_raw_manifest(output)
    assert "sha512:" + hashlib.sha512(raw).hexdigest() == result.manifest_digest


@pytest.mark.consumers
def test_sha512_layout_unreadable_by_syft(shapes, tmp_path):
    # syft 1.18 reads layouts through go-containerregistry, which accepts
    # sha256 digests only.
    result = build(shapes, "sha512-image", tmp_path / "layout")

    scan = run_tool("syft", "scan", result.target, "-o", "json")

    assert scan.returncode != 0
    assert 'unsupported hash: "sha512"' in scan.stderr


@pytest.mark.consumers
def test_sha512_copy_rejected_by_skopeo(shapes, tmp_path):
    # skopeo 1.9 hashes what it writes with sha256 and then compares that with
    # the sha512 digest the manifest names.
    output = tmp_path / "layout"
    build(shapes, "sha512-image", output)

    copy = skopeo("copy", f"oci:{output}:{REF}", f"oci:{tmp_path / 'c'}:x")

    assert copy.returncode != 0
    assert "saved with digest sha256:" in copy.stderr
