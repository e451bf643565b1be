"""Faults during a build: a full disk, refused links, a store changing underfoot,
signals and a killed process.

Each case asserts that no half-written layout and no temporary file remain,
and that the store is unchanged apart from what the test itself did to it.
Disks and cross-device links are real: the output goes to a tmpfs mounted
for the test. Refused hardlinks (EPERM) are injected, because root is exempt
from the kernel's protected-hardlink rule that produces them for users.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ocilayout import build_layout
from ocilayout.build import SELF_CHECK_VARIABLE
from ocilayout.errors import (
    DigestMismatchError,
    IntegrityError,
    OCILayoutError,
)
from ocilayout.layout import INIT_MARKER, LOCK_NAME, TEMP_MARKER
from ocilayout.store import SQLiteMetadata

from .hostile_support import (
    REPO,
    Invariants,
    PausedBuild,
    add_image,
    blob_path,
    blob_refs,
    cli_env,
    run_build,
    snapshot,
    tmpfs,
)

MIB = 1024 * 1024


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


@pytest.fixture
def big_image(store):
    """An image with a 6 MiB layer and two small ones, in the ``store`` fixture."""
    store.ensure_repository(REPO)
    digest = add_image(store.root, [6 * MIB, 4096, 100], tag="big")
    return store.root, digest


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def capture(store_root, output, tmp_path) -> Invariants:
    return Invariants.capture(store_root, output, tmp_path, tmp_path / "xdg-cache")


def leftovers(output) -> list[str]:
    """Names a build of ``output`` may leave beside it."""
    prefix = f".{output.name}.ocilayout-"
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(prefix))


def largest_layer(store_root, manifest: str) -> str:
    layers = [d for kind, d in blob_refs(store_root, manifest) if kind == "layer"]
    return max(layers, key=lambda d: blob_path(store_root, d).stat().st_size)


# A full disk


def test_disk_full_mid_copy_cli(big_image, env, tmp_path):
    root, digest = big_image
    with tmpfs(tmp_path / "small", "2m") as disk:
        output = disk / "layout"
        inv = capture(root, output, tmp_path)

        code, summary = run_build(
            env, "--store", root, "--digest", digest, "--output", output
        )

        assert code == 1, summary
        assert "No space left on device" in summary["error"]["message"]
        assert os.listdir(disk) == []
        inv.assert_failed()


def test_disk_full_at_every_step_leaves_nothing(big_image, tmp_path):
    """Grow a tmpfs page by page: every build fails cleanly until one fits.

    Each size runs out of space at a later write (a blob, a manifest body,
    ``oci-layout``, ``index.json``), so every write of a build meets ENOSPC.
    """
    errors = _fill_disk_at_every_step(big_image, tmp_path)

    assert len(errors) >= 4, errors
    assert all("No space left on device" in str(error) for error in errors)


def test_disk_full_at_every_step_raises_ocilayout_error(big_image, tmp_path):
    errors = _fill_disk_at_every_step(big_image, tmp_path)

    unwrapped = [repr(e) for e in errors if not isinstance(e, OCILayoutError)]
    assert unwrapped == []


def _fill_disk_at_every_step(big_image, tmp_path) -> list[Exception]:
    """Build on a tmpfs grown page by page until a build fits; return the errors."""
    root, digest = big_image
    small_layers = sum(
        blob_path(root, d).stat().st_size
        for _, d in blob_refs(root, digest)
        if d != largest_layer(root, digest)
    )
    errors: list[Exception] = []
    with tmpfs(tmp_path / "disk", "4k") as disk:
        output = disk / "layout"
        inv = capture(root, output, tmp_path)
        # Start just below the size of every blob, so the large copy fails late.
        size = 6 * MIB + small_layers - 64 * 1024
        while True:
            _remount(disk, size)
            try:
                result = build_layout(root, output, digest=digest)
            except (OCILayoutError, OSError) as error:
                errors.append(error)
                assert os.listdir(disk) == [], f"debris at {size} bytes"
                inv.assert_failed()
                size += 4096
                continue
            break
        inv.assert_built(result.warnings)
    return errors


def _remount(disk, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


# Links the kernel refuses


def test_cross_device_falls_back_to_copy(big_image, tmp_path):
    root, digest = big_image
    with tmpfs(tmp_path / "other-fs", "64m") as disk:
        output = disk / "layout"
        inv = capture(root, output, tmp_path)

        result = build_layout(root, output, digest=digest)

        assert {p.method for p in result.placements} == {"copy"}
        for blob in (output / "blobs" / "sha256").iterdir():
            assert blob.stat().st_nlink == 1
            assert blob.stat().st_mode & 0o222 == 0
        inv.assert_built(result.warnings)


def test_cross_device_hardlink_only_fails_cleanly(big_image, env, tmp_path):
    root, digest = big_image
    with tmpfs(tmp_path / "other-fs", "64m") as disk:
        output = disk / "layout"
        inv = capture(root, output, tmp_path)

        code, summary = run_build(
            env,
            "--store",
            root,
            "--digest",
            digest,
            "--output",
            output,
            "--link",
            "hardlink",
        )

        assert code == 1, summary
        assert "Invalid cross-device link" in summary["error"]["message"]
        assert os.listdir(disk) == []
        inv.assert_failed()


def fail_links(monkeypatch, code: int) -> list[str]:
    """Make every os.link fail with ``code``; return the paths tried."""
    tried = []

    def link(source, target, *args, **kwargs):
        tried.append(str(source))
        raise OSError(code, os.strerror(code), str(source))

    monkeypatch.setattr(os, "link", link)
    return tried


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.EMLINK])
def test_refused_hardlink_falls_back(big_image, output, tmp_path, monkeypatch, code):
    root, digest = big_image
    tried = fail_links(monkeypatch, code)
    inv = capture(root, output, tmp_path)
    counted = {"bytes": 0, "total-bytes": 0}

    def progress(event: str, value: int) -> None:
        if event in counted:
            counted[event] += value

    result = build_layout(root, output, digest=digest, progress=progress)

    assert len(tried) == 4
    # A refused link costs no hashing: every byte is read once, by the copy.
    assert counted["bytes"] == counted["total-bytes"]
    assert {p.method for p in result.placements} <= {"copy", "reflink"}
    assert not any("writable" in warning for warning in result.warnings)
    inv.assert_built(result.warnings)


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV])
def test_refused_hardlink_only_fails_cleanly(
    big_image, output, tmp_path, monkeypatch, code
):
    root, digest = big_image
    fail_links(monkeypatch, code)
    inv = capture(root, output, tmp_path)

    with pytest.raises(OCILayoutError) as caught:
        build_layout(root, output, digest=digest, link="hardlink")

    assert os.strerror(code) in str(caught.value)
    assert caught.value.exit_code == 1
    inv.assert_failed()


# The store changing during a build


class DeletingSource(SQLiteMetadata):
    """Metadata that deletes one blob file as the builder comes to open it.

    This is what a garbage collector racing the build does: the rows were
    read, then the file disappears before (``when="before-open"``) or right
    after (``when="after-open"``) the builder opens it.
    """

    def __init__(self, database, victim: str, when: str):
        super().__init__(database)
        self.victim = victim
        self.when = when

    def open_blob(self, repo, key):
        if key.endswith(self.victim) and self.when == "before-open":
            os.unlink(os.path.join(repo.storage_path, key))
        opened = super().open_blob(repo, key)
        if key.endswith(self.victim) and self.when == "after-open":
            os.unlink(opened[1])
        return opened


def test_blob_deleted_before_open(big_image, output, tmp_path):
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    inv = capture(root, output, tmp_path)
    inv.changed(path)
    source = DeletingSource(root / "metadata.sqlite3", victim, "before-open")

    with pytest.raises(IntegrityError) as caught:
        build_layout(source, output, digest=digest)

    source.close()
    assert caught.value.exit_code == 5
    assert victim in str(caught.value)
    assert "missing from the blob store" in str(caught.value)
    assert not os.path.lexists(output)
    inv.check_store()
    inv.check_nothing_else()


def test_blob_deleted_after_open_hardlink(big_image, output, tmp_path):
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    inv = capture(root, output, tmp_path)
    inv.changed(path)
    source = DeletingSource(root / "metadata.sqlite3", victim, "after-open")

    with pytest.raises(OCILayoutError) as caught:
        build_layout(source, output, digest=digest, link="hardlink")

    source.close()
    assert str(path) in str(caught.value)
    assert not os.path.lexists(output)
    inv.check_store()
    inv.check_nothing_else()


def test_blob_deleted_after_open_copy_keeps_verified_bytes(big_image, output, tmp_path):
    """A copy reads the open file, so the verified content is still placed."""
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    expected = path.read_bytes()
    inv = capture(root, output, tmp_path)
    inv.changed(path)
    source = DeletingSource(root / "metadata.sqlite3", victim, "after-open")

    result = build_layout(source, output, digest=digest, link="copy")

    source.close()
    assert (output / "blobs" / "sha256" / victim[7:]).read_bytes() == expected
    inv.assert_built(result.warnings)


def rewrite_on_first_chunk(path, change: str):
    """Return a progress callback that changes ``path`` after the first chunk."""
    done = []

    def progress(event: str, value: int) -> None:
        if event != "bytes" or done:
            return
        done.append(True)
        if change == "in-place":
            with open(path, "r+b") as handle:
                handle.seek(4 * MIB)
                handle.write(b"\0" * 4096)
        else:
            replacement = path.with_name(path.name + ".new")
            replacement.write_bytes(os.urandom(path.stat().st_size))
            os.replace(replacement, path)

    return progress


@pytest.mark.parametrize(
    "link,error_type",
    [("hardlink", IntegrityError), ("copy", DigestMismatchError)],
)
def test_blob_rewritten_in_place_during_copy(
    big_image, output, tmp_path, link, error_type
):
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    inv = capture(root, output, tmp_path)
    inv.changed(path)

    with pytest.raises(error_type) as caught:
        build_layout(
            root,
            output,
            digest=digest,
            link=link,
            workers=1,
            progress=rewrite_on_first_chunk(path, "in-place"),
        )

    assert caught.value.exit_code == 5
    assert str(path) in str(caught.value)
    assert leftovers(output) == []
    assert not os.path.lexists(output)
    inv.check_store()
    inv.check_nothing_else()


def test_blob_replaced_during_hardlink_verification(big_image, output, tmp_path):
    """The file is renamed over while hashed: the layout keeps the hashed inode."""
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    original = path.stat().st_ino
    inv = capture(root, output, tmp_path)
    inv.changed(path)

    result = build_layout(
        root,
        output,
        digest=digest,
        link="hardlink",
        workers=1,
        progress=rewrite_on_first_chunk(path, "replaced"),
    )

    placed = output / "blobs" / "sha256" / victim.split(":")[1]
    assert result.manifest_digest == digest
    assert placed.stat().st_ino == original
    assert path.stat().st_ino != original
    assert sha256_file(placed) == victim
    inv.check_store()
    inv.check_nothing_else()


def test_blob_replaced_before_hardlink(big_image, output, tmp_path, monkeypatch):
    """The file is renamed over between opening and linking: the build fails."""
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    inv = capture(root, output, tmp_path)
    inv.changed(path)
    real_link = os.link

    def replace_then_link(source, target, **options):
        if Path(source) == path:
            replacement = path.with_name(path.name + ".new")
            replacement.write_bytes(os.urandom(path.stat().st_size))
            os.replace(replacement, path)
        return real_link(source, target, **options)

    monkeypatch.setattr(os, "link", replace_then_link)
    with pytest.raises(IntegrityError) as caught:
        build_layout(root, output, digest=digest, link="hardlink", workers=1)

    assert "replaced or changed" in str(caught.value)
    assert str(path) in str(caught.value)
    assert not os.path.lexists(output)
    assert leftovers(output) == []
    inv.check_store()
    inv.check_nothing_else()


def test_blob_replaced_during_copy_keeps_verified_bytes(big_image, output, tmp_path):
    root, digest = big_image
    victim = largest_layer(root, digest)
    path = blob_path(root, victim)
    expected = path.read_bytes()
    inv = capture(root, output, tmp_path)
    inv.changed(path)

    result = build_layout(
        root,
        output,
        digest=digest,
        link="copy",
        workers=1,
        progress=rewrite_on_first_chunk(path, "replaced"),
    )

    assert (output / "blobs" / "sha256" / victim[7:]).read_bytes() == expected
    inv.check_store()
    inv.check_nothing_else()
    assert result.manifest_digest == digest


# Signals and a killed process


@pytest.mark.parametrize(
    "number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_signal_mid_build_exits_130(big_image, env, output, tmp_path, number, link):
    root, digest = big_image
    inv = capture(root, output, tmp_path)
    build = PausedBuild(
        tmp_path,
        env,
        "--store",
        root,
        "--digest",
        digest,
        "--output",
        output,
        "--link",
        link,
    )

    build.wait_until_paused()
    running = leftovers(output)
    build.signal(number)
    build.release()
    code, _, err = build.finish()

    assert len(running) == 1, running
    assert TEMP_MARKER in running[0]
    assert code == 130, err
    assert "interrupted; no layout was written" in err
    assert "Traceback" not in err
    assert leftovers(output) == []
    inv.assert_failed()


def test_killed_build_cleaned_by_next(big_image, env, output, tmp_path):
    root, digest = big_image
    inv = capture(root, output, tmp_path)
    killed = PausedBuild(
        tmp_path,
        env,
        "--store",
        root,
        "--digest",
        digest,
        "--output",
        output,
        "--link",
        "hardlink",
    )

    killed.wait_until_paused()
    killed.signal(signal.SIGKILL)
    code, _, _ = killed.finish()
    stale = leftovers(output)
    assert code == -signal.SIGKILL
    assert len(stale) == 1, stale
    assert TEMP_MARKER in stale[0]
    assert (output.parent / stale[0] / LOCK_NAME).exists()

    code, summary = run_build(
        env, "--store", root, "--digest", digest, "--output", output
    )

    assert code == 0, summary
    assert leftovers(output) == []
    inv.assert_built(summary["warnings"])


def test_cleanup_spares_what_it_cannot_prove_dead(pushed_single, output, tmp_path):
    """Only a real directory with a takeable lock file of this output is removed."""
    parent = output.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    (elsewhere / LOCK_NAME).write_text("")
    spared = {
        "symlink": f".{output.name}{TEMP_MARKER}symlink",
        "no-lock": f".{output.name}{TEMP_MARKER}nolock",
        "lock-symlink": f".{output.name}{TEMP_MARKER}locklink",
        "other-output": f".other{TEMP_MARKER}dead",
        "held-lock": f".{output.name}{TEMP_MARKER}held",
    }
    (parent / spared["symlink"]).symlink_to(elsewhere)
    (parent / spared["no-lock"]).mkdir()
    (parent / spared["lock-symlink"]).mkdir()
    (parent / spared["lock-symlink"] / LOCK_NAME).symlink_to(elsewhere / LOCK_NAME)
    (parent / spared["other-output"]).mkdir()
    (parent / spared["other-output"] / LOCK_NAME).write_text("")
    (parent / spared["held-lock"]).mkdir()
    (parent / spared["held-lock"] / LOCK_NAME).write_text("")
    dead = parent / f".{output.name}{TEMP_MARKER}dead"
    dead.mkdir()
    (dead / LOCK_NAME).write_text("")
    inv = capture(pushed_single.store.root, output, tmp_path)

    # A lock held through another open file stands for a live build.
    with open(parent / spared["held-lock"] / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = build_layout(
            pushed_single.store.root, output, digest=pushed_single.digest
        )

    assert not dead.exists()
    for name in spared.values():
        assert os.path.lexists(parent / name), name
    assert (elsewhere / "precious").read_text() == "keep"
    inv.names_before.discard(str(dead.relative_to(tmp_path)))
    inv.names_before.discard(str((dead / LOCK_NAME).relative_to(tmp_path)))
    inv.assert_built(result.warnings)


def test_stale_init_directory_cleaned(pushed_single, output, tmp_path):
    stale = output.parent / f".{output.name}{INIT_MARKER}0123456789ab"
    stale.mkdir()
    (stale / LOCK_NAME).write_text("")
    day_ago = stale.stat().st_mtime - 86400
    os.utime(stale / LOCK_NAME, (day_ago, day_ago))
    os.utime(stale, (day_ago, day_ago))

    build_layout(pushed_single.store.root, output, digest=pushed_single.digest)

    assert leftovers(output) == []


def test_store_snapshot_sees_link_counts(big_image, output, tmp_path):
    """The invariant check itself: an extra link into the store is noticed."""
    root, digest = big_image
    inv = capture(root, output, tmp_path)
    victim = blob_path(root, largest_layer(root, digest))
    stray = tmp_path / "stray-link"
    os.link(victim, stray)

    with pytest.raises(AssertionError, match="links"):
        inv.check_store()

    stray.unlink()
    inv.check_store()
    assert snapshot(root) == inv.store_before
