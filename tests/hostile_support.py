"""Support for the hostile-input, fault and concurrency tests.

Three kinds of helper live here:

- ``Invariants`` records a store, the output's surroundings and the output
  before a build, then checks what every hostile test asserts. The store
  must be byte-identical, modes and link counts included, apart from the
  links a hardlink build adds. Nothing may appear outside the output and the
  cache, and a failed build must leave the output as it was.
- Store surgery: crafted manifest bodies with their rows, tables rebuilt
  without their UNIQUE constraints, and a synthetic image with large layers.
- ``PausedBuild`` runs the real CLI in a subprocess that stops inside its
  first blob read until the test lets it go, so signals and a second build
  arrive mid-build without relying on timing. Run as
  ``python -m tests.hostile_support READY GO -- ocilayout-args...``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "docker-local"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
# How long a paused build waits for the test before it carries on by itself.
PAUSE_LIMIT_SECONDS = 60.0


# Snapshots and invariants


@dataclass(frozen=True)
class FileState:
    """What must not change about one path of the store."""

    mode: int
    nlink: int
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    link_target: str | None


def snapshot(root: Path) -> dict[str, FileState]:
    """Record every path under ``root`` without following symlinks.

    Regular files are hashed; FIFOs and devices are never opened, so a
    snapshot of a hostile store cannot block or touch hardware.
    """
    states: dict[str, FileState] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            states[str(path.relative_to(root))] = snapshot_entry(path)
    return states


def names_under(root: Path, exclude: list[Path]) -> set[str]:
    """Return every path under ``root``, leaving out the subtrees in ``exclude``."""
    skipped = [os.path.abspath(path) for path in exclude]
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d for d in dirs if os.path.abspath(os.path.join(folder, d)) not in skipped
        ]
        for name in dirs + files:
            full = os.path.join(folder, name)
            if os.path.abspath(full) not in skipped:
                found.add(os.path.relpath(full, root))
    return found


def inode_counts(tree: Path) -> dict[int, int]:
    """Count the regular files under ``tree`` per inode."""
    counts: dict[int, int] = {}
    if not tree.is_dir():
        return counts
    for folder, _, files in os.walk(tree):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(info.st_mode):
                counts[info.st_ino] = counts.get(info.st_ino, 0) + 1
    return counts


@dataclass
class Invariants:
    """The state a build must preserve, captured before the build.

    ``watch`` is the folder in which nothing but ``output`` and ``cache`` may
    appear; it normally contains the store too.
    """

    store: Path
    output: Path
    watch: Path
    cache: Path | None
    store_before: dict[str, FileState]
    names_before: set[str]
    output_before: dict[str, FileState] | FileState | None
    changed_by_test: set[Path] = field(default_factory=set)

    @classmethod
    def capture(
        cls,
        store: Path,
        output: Path,
        watch: Path,
        cache: Path | None = None,
    ) -> Invariants:
        excluded = [output] + ([cache] if cache else [])
        output_before = output_state(Path(output))
        return cls(
            store=Path(store),
            output=Path(output),
            watch=Path(watch),
            cache=cache,
            store_before=snapshot(Path(store)),
            names_before=names_under(Path(watch), excluded),
            output_before=output_before,
        )

    def changed(self, path: Path) -> None:
        """Exempt ``path`` and its folder: the test itself changes them."""
        self.changed_by_test.update({Path(path), Path(path).parent})

    def check_store(self) -> None:
        """Assert the store is as captured, apart from links into the output."""
        after = snapshot(self.store)
        before = dict(self.store_before)
        linked = inode_counts(self.output)
        for path in self.changed_by_test:
            name = str(path.relative_to(self.store))
            before.pop(name, None)
            after.pop(name, None)
        assert sorted(after) == sorted(before), (
            "paths appeared in or vanished from the store: "
            f"{sorted(set(after) ^ set(before))}"
        )
        for name, old in before.items():
            new = after[name]
            expected_links = old.nlink + linked.get(old.inode, 0)
            assert new.nlink == expected_links, (
                f"store file {name} has {new.nlink} links, expected {expected_links}"
            )
            assert _without_links(new) == _without_links(old), (
                f"store path {name} changed: {old} -> {new}"
            )

    def check_nothing_else(self) -> None:
        """Assert that nothing appeared beside the output or anywhere watched."""
        excluded = [self.output] + ([self.cache] if self.cache else [])
        exempt = {str(path.relative_to(self.watch)) for path in self.changed_by_test}
        after = names_under(self.watch, excluded) - exempt
        before = self.names_before - exempt
        assert after == before, (
            f"created outside the output: {sorted(after - before)}; "
            f"removed: {sorted(before - after)}"
        )

    def assert_failed(self) -> None:
        """Assert the invariants of a failed build."""
        if self.output_before is None:
            assert not os.path.lexists(self.output), f"{self.output} was created"
        else:
            assert output_state(self.output) == self.output_before
        self.check_store()
        self.check_nothing_else()

    def assert_built(self, warnings: list[str]) -> None:
        """Assert the invariants of a successful build, the layout checked too."""
        from ocilayout.check import check_layout

        report = check_layout(self.output)
        assert report.ok, [str(problem) for problem in report.errors]
        self.check_store()
        self.check_nothing_else()
        assert_hardlinks_guarded(self.output, self.store, warnings)


def output_state(path: Path) -> dict[str, FileState] | FileState | None:
    """Record what is at ``path``: a tree, a single file or symlink, or None."""
    if not os.path.lexists(path):
        return None
    if path.is_dir() and not path.is_symlink():
        return snapshot(path)
    return snapshot_entry(path)


def snapshot_entry(path: Path) -> FileState:
    info = path.lstat()
    digest = None
    if stat.S_ISREG(info.st_mode):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    return FileState(
        info.st_mode,
        info.st_nlink,
        info.st_size,
        info.st_mtime_ns,
        info.st_ino,
        digest,
        target,
    )


def _without_links(state: FileState) -> FileState:
    return FileState(
        state.mode,
        0,
        state.size,
        state.mtime_ns,
        state.inode,
        state.sha256,
        state.link_target,
    )


def assert_hardlinks_guarded(output: Path, store: Path, warnings: list[str]) -> None:
    """Assert every blob shared with the store is read-only or was warned about."""
    store_inodes = {
        state.inode for state in snapshot(store).values() if state.sha256 is not None
    }
    writable = []
    for blob in (output / "blobs").rglob("*"):
        info = blob.lstat()
        shared = stat.S_ISREG(info.st_mode) and info.st_ino in store_inodes
        if shared and info.st_mode & 0o222:
            writable.append(blob.name)
    if writable:
        assert any("writable in the store" in w for w in warnings), (
            f"hardlinked blobs {writable} are writable and no warning says so: "
            f"{warnings}"
        )


# The command line in a real process


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI runs whose cache and temporary files stay in tmp_path."""
    cache = tmp_path / "xdg-cache"
    temp = tmp_path / "tmpdir"
    cache.mkdir(exist_ok=True)
    temp.mkdir(exist_ok=True)
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "TMPDIR": str(temp)}


def run_build(env: dict[str, str], *args: object) -> tuple[int, dict]:
    """Run ``ocilayout build ARGS --json`` and return (exit code, summary)."""
    result = subprocess.run(
        [sys.executable, "-m", "ocilayout", "build", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"exit {result.returncode}, no JSON summary:\n{result.stdout}\n"
            f"{result.stderr}"
        ) from None
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, summary


# Store surgery


def connect(store_root: Path) -> sqlite3.Connection:
    return sqlite3.connect(Path(store_root) / "metadata.sqlite3", isolation_level=None)


def repository_row(store_root: Path, key: str = REPO) -> tuple[str, Path]:
    """Return (id, storage_path) of repository ``key``."""
    with connect(store_root) as db:
        row = db.execute(
            "SELECT id, storage_path FROM repositories WHERE key = ?", (key,)
        ).fetchone()
    assert row, f"no repository {key}"
    return row[0], Path(row[1])


def blob_refs(store_root: Path, manifest: str) -> list[tuple[str, str]]:
    """Return (kind, blob digest) rows of a manifest, config first."""
    with connect(store_root) as db:
        return db.execute(
            "SELECT kind, blob_digest FROM manifest_blob_refs "
            "WHERE manifest_digest = ? ORDER BY kind, blob_digest",
            (manifest,),
        ).fetchall()


def stored_body(store_root: Path, digest: str, key: str = REPO) -> bytes:
    _, storage = repository_row(store_root, key)
    return (storage / "oci-manifests" / digest).read_bytes()


def blob_path(store_root: Path, digest: str, key: str = REPO) -> Path:
    _, storage = repository_row(store_root, key)
    return storage / "oci-blobs" / digest


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_manifest(
    store_root: Path,
    body: bytes,
    media_type: str,
    *,
    image: str = "hostile/app",
    tag: str | None = None,
    refs: list[tuple[str, str]] = (),
    key: str = REPO,
) -> str:
    """Store ``body`` as a manifest with its artifacts row, as a push would.

    ``refs`` are (kind, blob digest) rows for manifest_blob_refs; the blobs
    themselves must already be stored. With ``tag`` an oci_tags row and a
    tag artifacts row are added too. Returns the body's digest.
    """
    digest = sha256_of(body)
    repo_id, storage = repository_row(store_root, key)
    folder = storage / "oci-manifests"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / digest).write_bytes(body)
    now = "2024-01-01T00:00:00+00:00"
    with connect(store_root) as db:
        for reference in [digest] + ([tag] if tag else []):
            db.execute(
                "INSERT OR REPLACE INTO artifacts (id, repository_id, path, name, "
                "version, size_bytes, checksum_sha256, content_type, storage_key, "
                "is_deleted, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    new_id(),
                    repo_id,
                    f"v2/{image}/manifests/{reference}",
                    f"{image}:{reference}",
                    reference,
                    len(body),
                    digest[7:],
                    media_type,
                    f"oci-manifests/{digest}",
                    now,
                    now,
                ),
            )
        if tag:
            db.execute(
                "INSERT OR REPLACE INTO oci_tags (id, repository_id, name, tag, "
                "manifest_digest, manifest_content_type, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id(), repo_id, image, tag, digest, media_type, now, now),
            )
        for kind, blob in refs:
            db.execute(
                "INSERT OR IGNORE INTO manifest_blob_refs (id, repository_id, "
                "manifest_digest, blob_digest, kind, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (new_id(), repo_id, digest, blob, kind, now),
            )
    return digest


def add_blob(store_root: Path, data: bytes, key: str = REPO) -> str:
    """Store ``data`` as a blob with its oci_blobs row; return its digest."""
    digest = sha256_of(data)
    repo_id, storage = repository_row(store_root, key)
    folder = storage / "oci-blobs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / digest).write_bytes(data)
    with connect(store_root) as db:
        db.execute(
            "INSERT OR IGNORE INTO oci_blobs (id, repository_id, digest, size_bytes, "
            "storage_key, pending_delete_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, NULL, ?)",
            (
                new_id(),
                repo_id,
                digest,
                len(data),
                f"oci-blobs/{digest}",
                "2024-01-01T00:00:00+00:00",
            ),
        )
    return digest


def remanifest(store_root: Path, original: str, change, **options) -> str:
    """Store a changed copy of manifest ``original`` with the same blob rows.

    ``change`` receives the parsed body and returns the new body, as a dict
    (serialized compactly) or as bytes. Returns the new digest.
    """
    document = json.loads(stored_body(store_root, original))
    changed = change(document)
    body = changed if isinstance(changed, bytes) else compact(changed)
    media_type = options.pop("media_type", document.get("mediaType", OCI_MANIFEST))
    refs = options.pop("refs", None)
    if refs is None:
        refs = blob_refs(store_root, original)
    return add_manifest(store_root, body, media_type, refs=refs, **options)


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def new_id() -> str:
    return str(uuid.uuid4())


def drop_unique(store_root: Path, table: str) -> None:
    """Rebuild ``table`` without UNIQUE constraints, keeping its rows.

    The emulator's schema has the constraints a production database may lack,
    so this is how a test simulates duplicate rows.
    """
    with connect(store_root) as db:
        (sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
            (table,),
        ).fetchone()
        relaxed = re.sub(r",\s*UNIQUE\s*\([^)]*\)", "", sql)
        relaxed = relaxed.replace(" UNIQUE", "")
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("BEGIN")
        db.execute(f"ALTER TABLE {table} RENAME TO {table}_constrained")
        db.execute(relaxed)
        db.execute(f"INSERT INTO {table} SELECT * FROM {table}_constrained")
        db.execute(f"DROP TABLE {table}_constrained")
        db.execute("COMMIT")


def duplicate_row(store_root: Path, table: str, where: str, *params, **changes):
    """Insert a copy of the rows of ``table`` matching ``where``, with a new id."""
    with connect(store_root) as db:
        cursor = db.execute(f"SELECT * FROM {table} WHERE {where}", params)
        columns = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
        assert rows, f"no {table} row matches {where} {params}"
        for row in rows:
            values = dict(zip(columns, row))
            values.update(changes, id=new_id())
            marks = ", ".join("?" for _ in values)
            db.execute(
                f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})",
                tuple(values.values()),
            )


def execute(store_root: Path, sql: str, *params) -> int:
    """Run one statement on the store's database; return the rows changed."""
    with connect(store_root) as db:
        return db.execute(sql, params).rowcount


# A synthetic image with large layers


def tar_layer(name: str, content: bytes) -> bytes:
    """Return an uncompressed tar holding one file, deterministically."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def add_image(store_root: Path, layer_sizes: list[int], tag: str) -> str:
    """Store an image of uncompressed tar layers of roughly the given sizes.

    The layers hold random bytes, so every call makes a new image. Returns the
    manifest digest; the image is ``hostile/app:<tag>`` in ``docker-local``.
    """
    layers = [
        tar_layer(f"file{i}", os.urandom(size)) for i, size in enumerate(layer_sizes)
    ]
    diff_ids = [sha256_of(layer) for layer in layers]
    config = compact(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    )
    config_digest = add_blob(store_root, config)
    layer_digests = [add_blob(store_root, layer) for layer in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": OCI_LAYER_TAR, "digest": digest, "size": len(layer)}
            for digest, layer in zip(layer_digests, layers)
        ],
    }
    refs = [("config", config_digest)] + [("layer", d) for d in layer_digests]
    return add_manifest(store_root, compact(manifest), OCI_MANIFEST, tag=tag, refs=refs)


# Filesystems the tests mount


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` for the duration of the block.

    Raises AssertionError with mount's own message when mounting fails, for
    example without CAP_SYS_ADMIN, so a missing privilege is never mistaken
    for a pass.
    """
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr}"
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# A build paused inside its first blob read


class PausedBuild:
    """The real CLI in a subprocess that stops inside its first blob read.

    ``wait_until_paused`` returns once a placement thread has read the first
    chunk of the largest blob and is waiting; ``release`` lets it go on.
    Between the two the build is mid-copy: its temporary directory exists and
    holds its lock.
    """

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: object):
        token = uuid.uuid4().hex[:8]
        self.ready = tmp_path / f"paused-{token}.ready"
        self.go = tmp_path / f"paused-{token}.go"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.hostile_support",
                str(self.ready),
                str(self.go),
                "--",
                "build",
                *map(str, args),
                "--json",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_until_paused(self) -> None:
        deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
        while not self.ready.exists():
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise AssertionError(
                    f"build exited {self.process.returncode} before pausing:\n"
                    f"{out}\n{err}"
                )
            assert time.monotonic() < deadline, "build never reached a blob read"
            time.sleep(0.01)

    def signal(self, number: int) -> None:
        os.kill(self.process.pid, number)

    def release(self) -> None:
        self.go.write_text("go")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=PAUSE_LIMIT_SECONDS * 2)
        for marker in (self.ready, self.go):
            marker.unlink(missing_ok=True)
        return self.process.returncode, out, err


def _pause_first_read(ready: str, go: str) -> None:
    """Make the first blob read wait for ``go`` after announcing ``ready``."""
    real_preadv = os.preadv
    lock = threading.Lock()
    paused = []

    def preadv(fd, buffers, offset, *rest):
        count = real_preadv(fd, buffers, offset, *rest)
        with lock:
            first = not paused and count > 0
            if first:
                paused.append(fd)
        if first:
            Path(ready).write_text(str(os.getpid()))
            deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
        return count

    os.preadv = preadv


def _main(argv: list[str]) -> None:
    ready, go, separator, *cli_args = argv
    assert separator == "--", "usage: hostile_support READY GO -- ARGS..."
    _pause_first_read(ready, go)
    # The default SIGINT handler raises KeyboardInterrupt, as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["ocilayout", *cli_args]
    from ocilayout.cli import main

    main()


if __name__ == "__main__":
    _main(sys.argv[1:])
