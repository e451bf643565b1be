"""One contract for every MetadataSource, checked against each backend.

The same images are stored four ways. They are pushed into the emulator's
SQLite store and into a real PostgreSQL server, copied by skopeo into a real
distribution registry whose storage tree is then read without the registry,
and kept as the OCI layout they were built in. Every backend
must return the same rows for them, treat a hidden blob as absent, reject
symlinks, and build layouts that skopeo and syft read.

The corpus, in one OCI layout, under these ref names:

- ``single``: an image manifest with uncompressed layers;
- ``multi``: an index of linux/amd64 and linux/arm64/v8 with attestations;
- ``sbom``: an SPDX artifact whose subject is ``single``;
- ``nested``: an index whose only child is ``multi``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator import postgres as emulator_postgres
from emulator.imagegen import (
    ImageResult,
    add_sbom_referrer,
    host_platform,
    make_image,
    wrap_in_index,
)
from emulator.push import push
from emulator.store import EmulatorStore
from ocilayout import mediatypes as mt
from ocilayout.build import build_layout
from ocilayout.errors import (
    DigestMismatchError,
    InvalidContentError,
    MetadataMissingError,
    UnsafePathError,
    UsageError,
)
from ocilayout.layout_source import OCILayoutMetadata
from ocilayout.postgres import PostgresMetadata
from ocilayout.registry_tree import RegistryTreeMetadata
from ocilayout.sources import open_source, sqlite_path
from ocilayout.store import MetadataSource, SQLiteMetadata

from .helpers import syft_packages, tool

# The PostgreSQL server fixtures, registered once for the whole session.
pytest_plugins = ("tests.pg_server",)

REPOSITORY_KEY = "docker-local"
IMAGE = "demo/app"
REFS = ("single", "multi", "sbom", "nested")
MULTI_PLATFORMS = ("linux/amd64", "linux/arm64/v8")
BACKENDS = ("sqlite", "postgresql", "registry-tree", "oci-layout")
# Only loopback: the registry and skopeo never reach another host.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Corpus:
    layout: Path
    digests: dict[str, str]
    multi: ImageResult
    single: ImageResult

    def body(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    def document(self, digest: str) -> dict:
        return json.loads(self.body(digest))


@dataclass
class Backend:
    """One way of storing the corpus, with the hooks the tests need."""

    name: str
    repo_key: str
    open: Callable[[], MetadataSource]
    # Make a blob absent the way this backend marks it.
    hide_blob: Callable[[str], None]
    # The file that contains a blob or manifest body.
    blob_path: Callable[[str], Path]


# The corpus and the backends


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    layout = tmp_path_factory.mktemp("contract-corpus") / "layout"
    multi = make_image(
        layout, platforms=list(MULTI_PLATFORMS), attestation=True, ref="multi"
    )
    single = make_image(
        layout, platforms=[host_platform()], ref="single", compression="tar"
    )
    digests = {
        "multi": multi.digest,
        "single": single.digest,
        "sbom": add_sbom_referrer(layout, "single", "sbom"),
        "nested": wrap_in_index(layout, "multi", "nested"),
    }
    return Corpus(layout, digests, multi, single)


@pytest.fixture(scope="session")
def registry_tree(corpus, tmp_path_factory) -> Path:
    """A registry storage tree that a real registry wrote for the corpus."""
    root = tmp_path_factory.mktemp("registry") / "root"
    with running_registry(root) as address:
        for ref in ("single", "multi", "sbom"):
            copy_to_registry(corpus.layout, ref, address)
        # skopeo 1.9 cannot copy an index of indexes, so the nested index
        # goes up through the distribution API as any client would send it.
        put_manifest(address, "nested", corpus.body(corpus.digests["nested"]))
    return root


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, corpus, tmp_path_factory) -> Backend:
    """A backend holding the corpus; tests must not change it."""
    folder = tmp_path_factory.mktemp(f"backend-{request.param}")
    return make_backend(request, request.param, corpus, folder)


@pytest.fixture(params=BACKENDS)
def fresh_backend(request, corpus, tmp_path) -> Backend:
    """A backend holding the corpus that the test may change."""
    return make_backend(request, request.param, corpus, tmp_path)


def make_backend(request, name: str, corpus: Corpus, folder: Path) -> Backend:
    if name == "sqlite":
        return sqlite_backend(corpus, folder)
    if name == "postgresql":
        server = request.getfixturevalue("postgres_server")
        return postgres_backend(corpus, folder, server)
    if name == "registry-tree":
        tree = request.getfixturevalue("registry_tree")
        return registry_backend(tree, folder)
    return layout_backend(corpus, folder)


def push_corpus(push_one: Callable[..., str], store, corpus: Corpus) -> None:
    for ref in REFS:
        digest = push_one(store, REPOSITORY_KEY, IMAGE, ref, f"{corpus.layout}:{ref}")
        assert digest == corpus.digests[ref]


def sqlite_backend(corpus: Corpus, folder: Path) -> Backend:
    store = EmulatorStore.init(folder / "store")
    push_corpus(push, store, corpus)
    storage = store.storage_root / REPOSITORY_KEY

    def hide_blob(digest: str) -> None:
        with sqlite3.connect(store.database_path) as connection:
            connection.execute(
                "UPDATE oci_blobs SET pending_delete_at = '2024-01-01T00:00:00+00:00'"
                " WHERE digest = ?",
                (digest,),
            )

    return Backend(
        "sqlite",
        REPOSITORY_KEY,
        lambda: SQLiteMetadata.for_store(store.root),
        hide_blob,
        lambda digest: sql_store_path(storage, digest, corpus),
    )


def postgres_backend(corpus: Corpus, folder: Path, server) -> Backend:
    url = server.url(server.create_database("contract"))
    store = emulator_postgres.PostgresStore.init(folder / "store", url)
    push_corpus(emulator_postgres.push, store, corpus)
    storage = store.storage_root / REPOSITORY_KEY

    def hide_blob(digest: str) -> None:
        with emulator_postgres.connect(url) as connection:
            connection.execute(
                "UPDATE oci_blobs SET pending_delete_at = now() WHERE digest = %s",
                (digest,),
            )

    return Backend(
        "postgresql",
        REPOSITORY_KEY,
        lambda: PostgresMetadata(url),
        hide_blob,
        lambda digest: sql_store_path(storage, digest, corpus),
    )


def sql_store_path(storage: Path, digest: str, corpus: Corpus) -> Path:
    folder = "oci-manifests" if digest in manifest_digests(corpus) else "oci-blobs"
    return storage / folder / digest


def registry_backend(tree: Path, folder: Path) -> Backend:
    root = folder / "registry"
    shutil.copytree(tree, root, symlinks=True)
    v2 = root / "docker" / "registry" / "v2"

    def hide_blob(digest: str) -> None:
        algorithm, encoded = digest.split(":")
        link = v2 / "repositories" / IMAGE / "_layers" / algorithm / encoded
        shutil.rmtree(link)

    def blob_path(digest: str) -> Path:
        algorithm, encoded = digest.split(":")
        return v2 / "blobs" / algorithm / encoded[:2] / encoded / "data"

    return Backend(
        "registry-tree", IMAGE, lambda: RegistryTreeMetadata(root), hide_blob, blob_path
    )


def layout_backend(corpus: Corpus, folder: Path) -> Backend:
    layout = folder / "layout"
    shutil.copytree(corpus.layout, layout, symlinks=True)

    def blob_path(digest: str) -> Path:
        algorithm, encoded = digest.split(":")
        return layout / "blobs" / algorithm / encoded

    return Backend(
        "oci-layout",
        "layout",
        lambda: OCILayoutMetadata(layout),
        lambda digest: blob_path(digest).unlink(),
        blob_path,
    )


@contextlib.contextmanager
def opened(backend: Backend) -> Iterator[MetadataSource]:
    source = backend.open()
    try:
        yield source
    finally:
        source.close()


def manifest_digests(corpus: Corpus) -> set[str]:
    """Every manifest and index digest of the corpus."""
    found = set(corpus.digests.values())
    for index in (corpus.digests["multi"], corpus.digests["nested"]):
        found |= {d["digest"] for d in corpus.document(index)["manifests"]}
    return found


def image_blobs(corpus: Corpus, digest: str) -> set[tuple[str, str, int]]:
    document = corpus.document(digest)
    config = document["config"]
    blobs = {("config", config["digest"], config["size"])}
    return blobs | {("layer", d["digest"], d["size"]) for d in document["layers"]}


def read_key(source: MetadataSource, repo, key: str) -> bytes:
    fd, _ = source.open_blob(repo, key)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


# Rows every backend returns alike


def test_repository_found_by_key(backend):
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        missing = source.repository("no-such-repository")

    assert repo is not None
    assert repo.key == backend.repo_key
    assert missing is None


@pytest.mark.parametrize("ref", REFS)
def test_tag_names_pushed_digest(backend, corpus, ref):
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.tag(repo, IMAGE, ref)
        holders = source.repositories_with_tag(IMAGE, ref)

    assert row is not None
    assert row.manifest_digest == corpus.digests[ref]
    assert row.content_type == corpus.document(corpus.digests[ref])["mediaType"]
    assert [r.key for r in holders] == [backend.repo_key]


@pytest.mark.parametrize("ref", ("single", "multi"))
def test_image_names_of_pushed_digest(backend, corpus, ref):
    child = corpus.multi.manifests["linux/arm64/v8"]
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        names = source.image_names(repo, corpus.digests[ref])
        child_names = source.image_names(repo, child)
        unknown = source.image_names(repo, "sha256:" + "0" * 64)

    # A layout's ref names do not say which image they belong to.
    expected = [] if backend.name == "oci-layout" else [IMAGE]
    assert names == expected
    assert child_names == expected
    assert unknown == []


def test_unknown_tag_absent(backend):
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.tag(repo, IMAGE, "no-such-tag")
        holders = source.repositories_with_tag(IMAGE, "no-such-tag")

    assert row is None
    assert holders == []


@pytest.mark.parametrize("ref", REFS)
def test_manifest_row_matches_body(backend, corpus, ref):
    digest = corpus.digests[ref]
    body = corpus.body(digest)

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.manifest(repo, digest)
        stored = read_key(source, repo, row.storage_key)
        holders = source.repositories_with_manifest(digest)

    assert row.digest == digest
    assert row.size == len(body)
    assert row.checksum_sha256 == hashlib.sha256(body).hexdigest()
    assert row.content_type == json.loads(body)["mediaType"]
    assert stored == body
    assert [r.key for r in holders] == [backend.repo_key]


def test_unknown_manifest_absent(backend):
    unknown = "sha256:" + "0" * 64
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.manifest(repo, unknown)
        holders = source.repositories_with_manifest(unknown)
        refs = source.blob_refs(repo, unknown)

    assert row is None
    assert holders == []
    assert refs == []


@pytest.mark.parametrize("which", ["single", "multi-arm64", "sbom"])
def test_blob_refs_match_manifest(backend, corpus, which):
    digest = {
        "single": corpus.digests["single"],
        "multi-arm64": corpus.multi.manifests["linux/arm64/v8"],
        "sbom": corpus.digests["sbom"],
    }[which]

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        refs = source.blob_refs(repo, digest)
        contents = {ref.digest: read_key(source, repo, ref.storage_key) for ref in refs}

    assert {(r.kind, r.digest, r.size) for r in refs} == image_blobs(corpus, digest)
    assert refs == sorted(refs, key=lambda ref: (ref.kind, ref.digest))
    for blob_digest, content in contents.items():
        assert "sha256:" + hashlib.sha256(content).hexdigest() == blob_digest


@pytest.mark.parametrize("ref", ["multi", "nested"])
def test_index_has_no_blob_refs(backend, corpus, ref):
    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        refs = source.blob_refs(repo, corpus.digests[ref])

    assert refs == []


def test_blob_row_has_size_and_key(backend, corpus):
    config = corpus.document(corpus.digests["single"])["config"]

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.blob(repo, config["digest"])
        content = read_key(source, repo, row.storage_key)
        unknown = source.blob(repo, "sha256:" + "1" * 64)

    assert row.digest == config["digest"]
    assert row.size == config["size"]
    assert len(content) == config["size"]
    assert unknown is None


def test_blob_digests_at_storage_key(backend, corpus):
    config = corpus.document(corpus.digests["single"])["config"]["digest"]

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        row = source.blob(repo, config)
        found = source.blob_digests_at(repo, row.storage_key)
        elsewhere = source.blob_digests_at(repo, "oci-blobs/sha256:" + "3" * 64)

    assert found == [config]
    assert elsewhere == []


@pytest.mark.parametrize("ref", ["multi", "nested", "single"])
def test_children_listed_sorted(backend, corpus, ref):
    document = corpus.document(corpus.digests[ref])
    expected = sorted({child["digest"] for child in document.get("manifests", [])})

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        children = source.children(repo, corpus.digests[ref])

    assert children == expected


def test_referrers_of_subject(backend, corpus):
    sbom = corpus.document(corpus.digests["sbom"])

    with opened(backend) as source:
        repo = source.repository(backend.repo_key)
        found = source.referrers(repo, corpus.digests["single"])
        none = source.referrers(repo, corpus.digests["multi"])

    assert [row.manifest_digest for row in found] == [corpus.digests["sbom"]]
    row = found[0]
    assert row.media_type == mt.OCI_MANIFEST
    assert row.artifact_type == sbom["artifactType"]
    assert row.size == len(corpus.body(corpus.digests["sbom"]))
    assert json.loads(row.annotations) == sbom["annotations"]
    assert none == []


# Builds every backend serves, read back by real consumers


def test_build_single_read_by_skopeo(backend, corpus, tmp_path):
    output = tmp_path / "layout"

    with opened(backend) as source:
        result = build_layout(source, output, image=IMAGE, tag="single")

    assert result.manifest_digest == corpus.digests["single"]
    inspect = subprocess.run(
        [tool("skopeo"), "inspect", f"oci:{output}:single"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == corpus.digests["single"]


def test_build_nested_index_scanned_by_syft(backend, corpus, tmp_path):
    output = tmp_path / "layout"

    with opened(backend) as source:
        result = build_layout(
            source, output, image=IMAGE, tag="nested", platform="linux/arm64"
        )

    assert result.manifest_digest == corpus.multi.manifests["linux/arm64/v8"]
    assert result.chain[:2] == [corpus.digests["nested"], corpus.digests["multi"]]
    packages = syft_packages(result.target)
    assert len(packages) == corpus.multi.package_count


def test_build_by_digest_with_referrers(backend, corpus, tmp_path):
    output = tmp_path / "layout"

    with opened(backend) as source:
        result = build_layout(
            source,
            output,
            digest=corpus.digests["single"],
            shape="full",
            referrers=True,
        )

    assert result.manifest_digest == corpus.digests["single"]
    assert result.referrers == [corpus.digests["sbom"]]


# What every backend rejects or treats as absent


def test_hidden_blob_is_absent(fresh_backend, corpus, tmp_path):
    manifest = corpus.digests["single"]
    layer = corpus.document(manifest)["layers"][-1]["digest"]
    fresh_backend.hide_blob(layer)

    with opened(fresh_backend) as source:
        repo = source.repository(fresh_backend.repo_key)
        row = source.blob(repo, layer)
        refs = {ref.digest: ref for ref in source.blob_refs(repo, manifest)}
        with pytest.raises(MetadataMissingError) as caught:
            build_layout(source, tmp_path / "out", digest=manifest)

    assert row is None
    assert refs[layer].size is None
    assert refs[layer].storage_key is None
    assert caught.value.reason == "blob-row-missing"
    assert caught.value.digest == layer
    assert not (tmp_path / "out").exists()


def test_registry_tree_fallback_target(registry_tree, corpus, tmp_path):
    """The scan fallback names a plain registry's repository by itself, since
    there a repository is one image, not <repository>/<image>."""
    backend = registry_backend(registry_tree, tmp_path)
    manifest = corpus.digests["single"]
    backend.hide_blob(corpus.document(manifest)["layers"][-1]["digest"])
    record = tmp_path / "record.json"
    fake = Path(__file__).parent / "fake_scanners" / "fake_scanner.py"
    port = free_port()  # nothing listens: the stand-in scanner never connects
    environment = {
        **os.environ,
        "FAKE_SCANNER_MODE": "grype",
        "FAKE_SCANNER_RECORD": str(record),
    }

    result = subprocess.run(
        [
            sys.executable, "-m", "ocilayout", "scan",
            "--registry-root", tmp_path / "registry", "--image", IMAGE,
            "--tag", "single", "--registry", f"127.0.0.1:{port}",
            "--registry-insecure", "--anonymous", "--scanner", "grype",
            "--scanner-path", fake, "--json",
        ],
        capture_output=True, text=True, env=environment, check=False,
    )

    document = json.loads(result.stdout)
    assert result.returncode == 0, document
    assert document["source"] == "registry"
    expected = f"registry:127.0.0.1:{port}/{IMAGE}@{manifest}"
    assert json.loads(record.read_text())["argv"][1] == expected


def test_symlinked_blob_rejected(fresh_backend, corpus, tmp_path):
    manifest = corpus.digests["single"]
    layer = corpus.document(manifest)["layers"][0]["digest"]
    path = fresh_backend.blob_path(layer)
    outside = tmp_path / "outside-copy"
    shutil.copyfile(path, outside)
    path.unlink()
    path.symlink_to(outside)

    with pytest.raises(UnsafePathError) as caught, opened(fresh_backend) as source:
        build_layout(source, tmp_path / "out", digest=manifest)

    assert caught.value.path == str(path)
    assert not (tmp_path / "out").exists()


def test_symlinked_folder_rejected(fresh_backend, corpus, tmp_path):
    manifest = corpus.digests["single"]
    config = corpus.document(manifest)["config"]["digest"]
    folder = fresh_backend.blob_path(config).parent
    moved = tmp_path / "moved-folder"
    shutil.move(folder, moved)
    folder.symlink_to(moved, target_is_directory=True)

    with pytest.raises(UnsafePathError), opened(fresh_backend) as source:
        build_layout(source, tmp_path / "out", digest=manifest)

    assert not (tmp_path / "out").exists()


def test_tampered_manifest_rejected(fresh_backend, corpus, tmp_path):
    manifest = corpus.digests["single"]
    path = fresh_backend.blob_path(manifest)
    body = path.read_bytes()
    path.unlink()
    # Same size, still valid JSON, another digest.
    path.write_bytes(body.replace(b"schemaVersion", b"schemaVersioN", 1))
    assert path.read_bytes() != body

    with pytest.raises(DigestMismatchError) as caught, opened(fresh_backend) as source:
        build_layout(source, tmp_path / "out", image=IMAGE, tag="single")

    assert caught.value.expected == manifest
    assert not (tmp_path / "out").exists()


# The distribution registry storage tree


def test_registry_tree_lists_repositories(registry_tree, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(registry_tree, root, symlinks=True)
    repositories = root / "docker" / "registry" / "v2" / "repositories"
    shutil.copytree(repositories / IMAGE, repositories / "other" / "deep" / "app")
    (repositories / "linked").symlink_to(repositories / "demo")

    source = RegistryTreeMetadata(root)

    assert source.repository_names() == [IMAGE, "other/deep/app"]


def test_registry_tree_holders_of_manifest(registry_tree, corpus, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(registry_tree, root, symlinks=True)
    repositories = root / "docker" / "registry" / "v2" / "repositories"
    shutil.copytree(repositories / IMAGE, repositories / "mirror" / "app")

    source = RegistryTreeMetadata(root)
    holders = source.repositories_with_manifest(corpus.digests["single"])

    assert [repo.key for repo in holders] == [IMAGE, "mirror/app"]


def test_registry_link_naming_other_digest(registry_tree, corpus, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(registry_tree, root, symlinks=True)
    manifest = corpus.digests["single"]
    config = corpus.document(manifest)["config"]["digest"]
    link = (
        root
        / "docker"
        / "registry"
        / "v2"
        / "repositories"
        / IMAGE
        / "_layers"
        / "sha256"
        / config.split(":")[1]
        / "link"
    )
    link.write_text("sha256:" + "2" * 64)

    source = RegistryTreeMetadata(root)
    repo = source.repository(IMAGE)

    with pytest.raises(InvalidContentError, match="not the digest"):
        source.blob(repo, config)


def test_registry_data_removed_by_gc_is_absent(registry_tree, corpus, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(registry_tree, root, symlinks=True)
    manifest = corpus.digests["single"]
    layer = corpus.document(manifest)["layers"][0]["digest"]
    encoded = layer.split(":")[1]
    v2 = root / "docker" / "registry" / "v2"
    shutil.rmtree(v2 / "blobs" / "sha256" / encoded[:2] / encoded)

    source = RegistryTreeMetadata(root)
    repo = source.repository(IMAGE)
    refs = {ref.digest: ref for ref in source.blob_refs(repo, manifest)}

    assert (v2 / "repositories" / IMAGE / "_layers" / "sha256" / encoded).is_dir()
    assert refs[layer].storage_key is None


def test_registry_tag_of_other_repository_absent(registry_tree):
    source = RegistryTreeMetadata(registry_tree)
    repo = source.repository(IMAGE)

    assert source.tag(repo, "other/app", "single") is None
    assert source.repositories_with_tag("../escape", "single") == []
    assert source.repository("demo/../demo/app") is None


def test_registry_root_without_tree_rejected(tmp_path):
    with pytest.raises(UsageError, match="rootdirectory"):
        RegistryTreeMetadata(tmp_path)


# The OCI layout source


def test_layout_full_ref_name_matches_image_and_tag(corpus, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(corpus.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        annotations = entry["annotations"]
        name = annotations["org.opencontainers.image.ref.name"]
        annotations["org.opencontainers.image.ref.name"] = f"{IMAGE}:{name}"
    (layout / "index.json").write_text(json.dumps(index))

    source = OCILayoutMetadata(layout)

    assert (
        source.tag(source.repo, IMAGE, "single").manifest_digest
        == (corpus.digests["single"])
    )
    assert source.tag(source.repo, "other/app", "single") is None


def test_layout_symlinked_index_rejected(corpus, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(corpus.layout, layout)
    moved = tmp_path / "index-copy.json"
    (layout / "index.json").rename(moved)
    (layout / "index.json").symlink_to(moved)

    with pytest.raises(UnsafePathError):
        OCILayoutMetadata(layout)


def test_layout_without_header_rejected(tmp_path):
    with pytest.raises(UsageError, match="oci-layout"):
        OCILayoutMetadata(tmp_path)


# The source factory


def test_open_source_needs_exactly_one(tmp_path):
    with pytest.raises(UsageError, match="exactly one of --db"):
        open_source()
    with pytest.raises(UsageError, match="exactly one of --db"):
        open_source("sqlite:///x", store=tmp_path)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///srv/meta.sqlite3", "/srv/meta.sqlite3"),
        ("sqlite:meta.sqlite3", "meta.sqlite3"),
        ("sqlite:///srv/with%20space.sqlite3", "/srv/with space.sqlite3"),
    ],
)
def test_sqlite_url_path(url, path):
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite://host/x", "sqlite:///x?mode=rw", "sqlite:"])
def test_sqlite_url_invalid(url):
    with pytest.raises(UsageError, match="invalid SQLite URL"):
        sqlite_path(url)


def test_unknown_database_scheme_hides_rest():
    with pytest.raises(UsageError) as caught:
        open_source("mysql://admin:hunter2@db/meta")

    assert "hunter2" not in str(caught.value)
    assert "mysql://" in str(caught.value)


@pytest.mark.parametrize("kind", BACKENDS)
def test_open_source_opens_each_kind(kind, corpus, registry_tree, tmp_path, request):
    if kind == "postgresql":
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database("factory"))
        emulator_postgres.PostgresStore.init(tmp_path / "store", url)
        options = {"db": url}
    elif kind == "sqlite":
        store = EmulatorStore.init(tmp_path / "store")
        options = {"db": f"sqlite://{store.database_path}"}
    elif kind == "registry-tree":
        options = {"registry_root": registry_tree}
    else:
        options = {"layout": corpus.layout}

    source = open_source(**options)
    try:
        found = source.repositories_with_tag(IMAGE, "no-such-tag")
    finally:
        source.close()

    assert found == []


def test_open_source_store_directory(corpus, tmp_path):
    store = EmulatorStore.init(tmp_path / "store")
    push(store, REPOSITORY_KEY, IMAGE, "single", f"{corpus.layout}:single")

    source = open_source(store=store.root)
    try:
        row = source.tag(source.repository(REPOSITORY_KEY), IMAGE, "single")
    finally:
        source.close()

    assert row.manifest_digest == corpus.digests["single"]


# A real distribution registry on loopback


@contextlib.contextmanager
def running_registry(root: Path) -> Iterator[str]:
    """Run the Debian ``docker-registry`` storing into ``root``; yield host:port."""
    binary = tool("docker-registry")
    port = free_port()
    config = root.parent / "registry-config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: {LOOPBACK}:{port}\n"
    )
    log = (root.parent / "registry.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        address = f"{LOOPBACK}:{port}"
        wait_for_registry(address, process)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for_registry(address: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"docker-registry exited {process.returncode}")
        try:
            with loopback_opener().open(f"http://{address}/v2/", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"docker-registry did not answer at {address} in 30 s")


def copy_to_registry(layout: Path, ref: str, address: str) -> None:
    result = subprocess.run(
        [
            tool("skopeo"),
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{ref}",
            f"docker://{address}/{IMAGE}:{ref}",
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK},
    )
    assert result.returncode == 0, result.stderr


def put_manifest(address: str, tag: str, body: bytes) -> None:
    media_type = json.loads(body)["mediaType"]
    request = urllib.request.Request(
        f"http://{address}/v2/{IMAGE}/manifests/{tag}",
        data=body,
        method="PUT",
        headers={"Content-Type": media_type},
    )
    with loopback_opener().open(request, timeout=30) as response:
        assert response.status == 201, response.read()


def loopback_opener() -> urllib.request.OpenerDirector:
    # No proxy from the environment: these requests stay on this machine.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]
