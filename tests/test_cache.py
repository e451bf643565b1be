"""Verification cache: hits, misses after any change, corruption and concurrency."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ocilayout import (
    DigestMismatchError,
    UsageError,
    build_layout,
    temporary_layout,
)
from ocilayout.cache import DATABASE_NAME, VerifyCache, default_cache_dir, remove_layout
from ocilayout.digest import Digest
from ocilayout.place import FileIdentity, place_blob

from .helpers import ROOT, run_cli, run_json

OTHER_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def cache(tmp_path) -> VerifyCache:
    with VerifyCache(tmp_path / "cache") as opened:
        yield opened


@pytest.fixture
def blob(tmp_path) -> tuple[Path, Digest]:
    """A store-like blob file of 1 MiB and a bit, with its digest."""
    data = os.urandom((1 << 20) + 7)
    path = tmp_path / "store-blob"
    path.write_bytes(data)
    return path, Digest.of_bytes(data)


def identity_of(path: Path) -> FileIdentity:
    return FileIdentity.of(os.stat(path))


def rewrite_same_size_keeping_mtime(path: Path) -> None:
    """Overwrite ``path`` in place with other bytes, then set its mtime back."""
    before = os.stat(path)
    with open(path, "r+b") as stream:
        stream.write(os.urandom(before.st_size))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def place(path: Path, digest: Digest, target: Path, cache: VerifyCache):
    fd = os.open(path, os.O_RDONLY)
    try:
        placement = place_blob(
            fd,
            str(path),
            digest,
            os.fstat(fd).st_size,
            str(target),
            "hardlink",
            verified=lambda identity: cache.hit(identity, digest),
        )
    finally:
        os.close(fd)
    cache.record(placement.identity, digest)
    return placement


def build_hashed(result) -> list[bool]:
    return [placement.hashed for placement in result.placements]


# Entries


def test_recorded_identity_hits(cache, blob):
    path, digest = blob
    identity = identity_of(path)

    assert not cache.hit(identity, digest)
    cache.record(identity, digest)

    assert cache.hit(identity, digest)
    assert cache.hit(identity, str(digest))
    assert cache.problem is None


def test_other_digest_misses(cache, blob):
    path, digest = blob
    cache.record(identity_of(path), digest)

    assert not cache.hit(identity_of(path), OTHER_DIGEST)


@pytest.mark.parametrize("field", ["device", "inode", "size", "mtime_ns", "ctime_ns"])
def test_changed_identity_field_misses(cache, blob, field):
    path, digest = blob
    identity = identity_of(path)
    cache.record(identity, digest)

    changed = dataclasses.replace(identity, **{field: getattr(identity, field) + 1})

    assert not cache.hit(changed, digest)


def test_record_replaces_older_identity(cache, blob):
    path, digest = blob
    old = identity_of(path)
    cache.record(old, digest)
    new = dataclasses.replace(old, ctime_ns=old.ctime_ns + 1)

    cache.record(new, digest)

    assert cache.hit(new, digest)
    assert not cache.hit(old, digest)


def test_large_device_and_inode_numbers(cache):
    identity = FileIdentity((1 << 64) - 1, (1 << 63) + 5, 10, 1, 2)

    cache.record(identity, OTHER_DIGEST)

    assert cache.hit(identity, OTHER_DIGEST)
    assert not cache.hit(dataclasses.replace(identity, inode=5), OTHER_DIGEST)


def test_entries_persist_across_processes(tmp_path, blob):
    path, digest = blob
    with VerifyCache(tmp_path / "cache") as first:
        first.record(identity_of(path), digest)

    with VerifyCache(tmp_path / "cache") as second:
        assert second.hit(identity_of(path), digest)


def test_prune_removes_old_entries(cache, blob):
    path, digest = blob
    cache.record(identity_of(path), digest)

    assert cache.prune(3600) == 0
    assert cache.prune(-1) == 1
    assert not cache.hit(identity_of(path), digest)


# A changed file is hashed again


def test_same_size_rewrite_changes_identity(cache, blob):
    path, digest = blob
    before = identity_of(path)
    cache.record(before, digest)

    rewrite_same_size_keeping_mtime(path)
    after = identity_of(path)

    assert after.size == before.size
    assert after.mtime_ns == before.mtime_ns
    assert after.ctime_ns != before.ctime_ns
    assert not cache.hit(after, digest)


def test_same_size_rewrite_defeats_cache(cache, blob, tmp_path):
    path, digest = blob
    first = place(path, digest, tmp_path / "first", cache)
    second = place(path, digest, tmp_path / "second", cache)

    rewrite_same_size_keeping_mtime(path)
    with pytest.raises(DigestMismatchError) as caught:
        place(path, digest, tmp_path / "third", cache)

    assert first.hashed
    assert not second.hashed
    assert caught.value.expected == str(digest)
    assert caught.value.path == str(path)
    assert not (tmp_path / "third").exists()


def test_copy_placement_never_uses_cache(cache, blob, tmp_path):
    path, digest = blob
    cache.record(identity_of(path), digest)
    fd = os.open(path, os.O_RDONLY)
    try:
        placement = place_blob(
            fd,
            str(path),
            digest,
            os.fstat(fd).st_size,
            str(tmp_path / "copy"),
            "copy",
            verified=lambda identity: cache.hit(identity, digest),
        )
    finally:
        os.close(fd)

    assert placement.hashed
    assert placement.identity is None


# Builds


def test_rebuild_skips_hashing(pushed_single, tmp_path, cache):
    store = pushed_single.store.root

    cold = build_layout(
        store,
        tmp_path / "cold",
        digest=pushed_single.digest,
        link="hardlink",
        cache=cache,
    )
    warm = build_layout(
        store,
        tmp_path / "warm",
        digest=pushed_single.digest,
        link="hardlink",
        cache=cache,
    )

    assert all(build_hashed(cold))
    assert not any(build_hashed(warm))
    assert warm.bytes_verified == 0
    assert {p.method for p in warm.placements} == {"hardlink"}


def test_rebuild_after_rewrite_fails(pushed_single, tmp_path, cache):
    store = pushed_single.store
    build_layout(
        store.root,
        tmp_path / "cold",
        digest=pushed_single.digest,
        link="hardlink",
        cache=cache,
    )
    layer = json.loads(
        (tmp_path / "cold" / "blobs" / "sha256" / pushed_single.digest[7:]).read_text()
    )["layers"][0]["digest"]
    repo = store.repository("docker-local")
    rewrite_same_size_keeping_mtime(Path(repo.storage_path) / "oci-blobs" / layer)

    with pytest.raises(DigestMismatchError) as caught:
        build_layout(
            store.root,
            tmp_path / "warm",
            digest=pushed_single.digest,
            link="hardlink",
            cache=cache,
        )

    assert caught.value.expected == layer
    assert not (tmp_path / "warm").exists()


def test_plain_removal_of_layout_invalidates(pushed_single, tmp_path, cache):
    store = pushed_single.store.root
    build_layout(
        store, tmp_path / "a", digest=pushed_single.digest, link="hardlink", cache=cache
    )

    shutil.rmtree(tmp_path / "a")
    again = build_layout(
        store, tmp_path / "b", digest=pushed_single.digest, link="hardlink", cache=cache
    )

    assert all(build_hashed(again))


def test_remove_layout_keeps_entries(pushed_single, tmp_path, cache):
    store = pushed_single.store.root
    build_layout(
        store, tmp_path / "a", digest=pushed_single.digest, link="hardlink", cache=cache
    )

    remove_layout(tmp_path / "a", cache)
    again = build_layout(
        store, tmp_path / "b", digest=pushed_single.digest, link="hardlink", cache=cache
    )

    assert not (tmp_path / "a").exists()
    assert not any(build_hashed(again))


def test_temporary_layouts_reuse_entries(pushed_single, cache):
    options = {"digest": pushed_single.digest, "link": "hardlink", "cache": cache}
    store = pushed_single.store.root

    with temporary_layout(store, **options) as first:
        first_hashed = build_hashed(first)
    with temporary_layout(store, **options) as second:
        second_hashed = build_hashed(second)

    assert all(first_hashed)
    assert not any(second_hashed)


def test_cli_cache_dir_and_no_cache(pushed_single, tmp_path):
    select = ["--store", pushed_single.store.root, "--digest", pushed_single.digest]
    cache_dir = tmp_path / "cli-cache"

    runs = {}
    for name, extra in [
        ("cold", ["--cache-dir", cache_dir]),
        ("warm", ["--cache-dir", cache_dir]),
        ("off", ["--no-cache", "--cache-dir", cache_dir]),
    ]:
        code, summary = run_json("build", *select, "-o", tmp_path / name, *extra)
        assert code == 0, summary
        runs[name] = [blob["hashed"] for blob in summary["blobs"]]

    assert (cache_dir / DATABASE_NAME).is_file()
    assert all(runs["cold"])
    assert not any(runs["warm"])
    assert all(runs["off"])


def test_cli_remove_keeps_entries(pushed_single, tmp_path):
    """`ocilayout remove` then build: nothing is hashed; after `rm -r`, all is."""
    select = ["--store", pushed_single.store.root, "--digest", pushed_single.digest]
    cache = ["--cache-dir", tmp_path / "cli-cache"]

    code, first = run_json("build", *select, "-o", tmp_path / "a", *cache)
    assert code == 0, first
    removed = run_cli("remove", tmp_path / "a", *cache)
    assert removed.returncode == 0, removed.stderr
    code, second = run_json("build", *select, "-o", tmp_path / "b", *cache)
    assert code == 0, second
    shutil.rmtree(tmp_path / "b")
    code, third = run_json("build", *select, "-o", tmp_path / "c", *cache)
    assert code == 0, third

    assert not (tmp_path / "a").exists()
    assert all(blob["hashed"] for blob in first["blobs"])
    assert not any(blob["hashed"] for blob in second["blobs"])
    assert all(blob["hashed"] for blob in third["blobs"])


@pytest.mark.parametrize(
    "kind", ["plain folder", "file", "missing", "extra file", "extra blob entry"]
)
def test_cli_remove_refuses_what_is_not_a_layout(tmp_path, kind):
    target = tmp_path / "target"
    kept = target / "keep.txt"
    if kind == "file":
        target.write_text("not a layout")
    elif kind != "missing":
        target.mkdir()
    if kind in ("extra file", "extra blob entry"):
        (target / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (target / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
        (target / "blobs" / "sha256").mkdir(parents=True)
    if kind == "extra blob entry":
        kept = target / "blobs" / "sha256" / "notes.txt"
    if kind != "file" and kind != "missing":
        kept.write_text("not a layout")

    result = run_cli("remove", target, "--no-cache")

    assert result.returncode == 2
    assert str(target) in result.stderr
    if kind == "file":
        assert target.read_text() == "not a layout"
    elif kind != "missing":
        assert kept.read_text() == "not a layout"
    if kind.startswith("extra"):
        assert kept.name in result.stderr


# Location and permissions


def test_default_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ocilayout"


def test_relative_xdg_location_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "ocilayout"


def test_new_directory_is_private(tmp_path):
    with VerifyCache(tmp_path / "a" / "b"):
        pass

    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b" / DATABASE_NAME).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("target", ["directory", "database"])
def test_writable_by_others_rejected(tmp_path, target):
    folder = tmp_path / "shared"
    VerifyCache(folder).close()
    path = folder if target == "directory" else folder / DATABASE_NAME
    path.chmod(0o777 if target == "directory" else 0o666)

    with pytest.raises(UsageError) as caught:
        VerifyCache(folder)

    assert str(path) in str(caught.value)
    assert "--no-cache" in str(caught.value)


def test_cli_rejects_shared_cache_dir(pushed_single, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)

    code, summary = run_json(
        "build",
        "--store",
        pushed_single.store.root,
        "--digest",
        pushed_single.digest,
        "-o",
        tmp_path / "out",
        "--cache-dir",
        folder,
    )

    assert code == 2
    assert str(folder) in summary["error"]["message"]
    assert not (tmp_path / "out").exists()


# Damaged databases are misses


def test_corrupt_database_is_a_miss(tmp_path, blob):
    path, digest = blob
    folder = tmp_path / "cache"
    with VerifyCache(folder) as cache:
        cache.record(identity_of(path), digest)
    database = folder / DATABASE_NAME
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.write_bytes(b"not a database, " * 512)

    with VerifyCache(folder) as cache:
        hit = cache.hit(identity_of(path), digest)
        cache.record(identity_of(path), digest)
        problem = cache.problem

    assert not hit
    assert problem is not None
    assert str(database) in problem


def test_altered_row_is_a_miss(tmp_path, blob):
    path, digest = blob
    folder = tmp_path / "cache"
    with VerifyCache(folder) as cache:
        cache.record(identity_of(path), digest)
    with sqlite3.connect(folder / DATABASE_NAME) as db:
        db.execute("UPDATE verified SET ctime_ns = ctime_ns - 1")

    with VerifyCache(folder) as cache:
        assert not cache.hit(identity_of(path), digest)
        assert cache.problem is None


def test_unknown_format_version_is_a_miss(tmp_path, blob):
    path, digest = blob
    folder = tmp_path / "cache"
    with VerifyCache(folder) as cache:
        cache.record(identity_of(path), digest)
    with sqlite3.connect(folder / DATABASE_NAME) as db:
        db.execute("PRAGMA user_version = 99")

    with VerifyCache(folder) as cache:
        assert not cache.hit(identity_of(path), digest)
        assert "99" in cache.problem


def test_build_with_corrupt_cache_still_verifies(pushed_single, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    (folder / DATABASE_NAME).write_bytes(b"\x00garbage" * 1000)
    (folder / DATABASE_NAME).chmod(0o600)

    with VerifyCache(folder) as cache:
        result = build_layout(
            pushed_single.store.root,
            tmp_path / "out",
            digest=pushed_single.digest,
            link="hardlink",
            cache=cache,
        )

    assert all(build_hashed(result))
    assert any(str(folder) in warning for warning in result.warnings)


# Concurrency

_WRITER = """
import sys
from ocilayout.cache import VerifyCache
from ocilayout.place import FileIdentity

folder, worker = sys.argv[1], int(sys.argv[2])
digest = "sha256:" + "cd" * 32
with VerifyCache(folder) as cache:
    for round in range(200):
        own = FileIdentity(1, worker * 1000 + round, 10, round, round)
        shared = FileIdentity(2, round, 10, worker, worker)
        cache.record_many([(own, digest), (shared, digest)])
        assert cache.hit(own, digest), (worker, round)
        cache.hit(shared, digest)
    assert cache.problem is None, cache.problem
"""


def test_concurrent_writers_keep_every_entry(tmp_path):
    folder = tmp_path / "cache"
    VerifyCache(folder).close()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(folder), str(worker)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(6)
    ]
    errors = [worker.communicate()[1] for worker in workers]

    assert [worker.returncode for worker in workers] == [0] * 6, errors
    digest = "sha256:" + "cd" * 32
    with VerifyCache(folder) as cache:
        for worker in range(6):
            for round in range(200):
                own = FileIdentity(1, worker * 1000 + round, 10, round, round)
                assert cache.hit(own, digest)
        with sqlite3.connect(folder / DATABASE_NAME) as db:
            (shared_rows,) = db.execute(
                "SELECT count(*) FROM verified WHERE device = 2"
            ).fetchone()
    assert shared_rows == 200


def test_link_during_hashing_keeps_build(pushed_single, tmp_path):
    repo = pushed_single.store.repository("docker-local")
    store_files = sorted((Path(repo.storage_path) / "oci-blobs").iterdir())
    linked = []

    def link_like_another_build(event: str, value: int) -> None:
        if event == "bytes" and not linked:
            for number, path in enumerate(store_files):
                os.link(path, tmp_path / f"other-build-{number}")
                linked.append(path)

    result = build_layout(
        pushed_single.store.root,
        tmp_path / "out",
        digest=pushed_single.digest,
        link="hardlink",
        workers=1,
        progress=link_like_another_build,
    )

    assert linked
    assert {p.method for p in result.placements} == {"hardlink"}
