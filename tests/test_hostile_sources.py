"""Hostile sources: layouts for check, layout and registry trees, scanners, rows.

Every case runs the real command line in a subprocess and asserts the exit
code the documentation gives and that no traceback escapes. Symlinks that
lead outside the given root must be rejected, not followed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from emulator import postgres as emulator_postgres

from .conftest import IMAGE_NAME, REPOSITORY_KEY
from .helpers import run_cli

pytest_plugins = ("tests.pg_server",)


def assert_clean_failure(result, codes: set[int]) -> None:
    """Assert a failed run exited with one of ``codes`` and printed no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in codes, (result.returncode, result.stdout, result.stderr)


# PostgreSQL rows


@pytest.fixture
def pg_pushed(postgres_server, postgres_database, real_image_single, tmp_path):
    """A PostgreSQL store with the single-platform image pushed as ``single``."""
    url = postgres_server.url(postgres_database)
    store = emulator_postgres.PostgresStore.init(tmp_path / "store", url)
    digest = emulator_postgres.push(
        store, REPOSITORY_KEY, IMAGE_NAME, "single", real_image_single.spec
    )
    return url, store, digest


def run_sql(url: str, *statements: str) -> None:
    with emulator_postgres.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def build_from_db(url: str, output: Path):
    return run_cli(
        "build", "--db", url, "--image", IMAGE_NAME, "--tag", "single",
        "--output", output,
    )


# (table, column, expected exit codes) for a NULL in a NOT NULL column.
# artifacts.storage_key is also the lookup key, so a NULL hides the row (4).
# A NULL repositories.key or oci_tags.manifest_content_type is not read on
# the build path, so building (0) is sound there.
NULL_COLUMNS = [
    ("repositories", "storage_path", {4}),
    ("repositories", "storage_backend", {4}),
    ("repositories", "key", {0, 3, 4, 5}),
    ("artifacts", "size_bytes", {5}),
    ("artifacts", "storage_key", {4, 5}),
    ("oci_tags", "manifest_digest", {5}),
    ("oci_tags", "manifest_content_type", {0, 5}),
    ("oci_blobs", "size_bytes", {5}),
    ("oci_blobs", "storage_key", {4, 5}),
    ("oci_blobs", "digest", {4, 5}),
    ("manifest_blob_refs", "blob_digest", {5}),
    ("manifest_blob_refs", "kind", {5}),
]


@pytest.mark.parametrize("table, column, codes", NULL_COLUMNS)
def test_null_column_fails_cleanly(pg_pushed, tmp_path, table, column, codes):
    url, _, _ = pg_pushed
    constraints = ""
    if (table, column) == ("manifest_blob_refs", "kind"):
        constraints = "ALTER TABLE manifest_blob_refs DROP CONSTRAINT IF EXISTS manifest_blob_refs_kind_check"
    run_sql(
        url,
        f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL",
        *([constraints] if constraints else []),
        f"UPDATE {table} SET {column} = NULL",
    )
    output = tmp_path / "layout"

    result = build_from_db(url, output)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in codes, (result.returncode, result.stderr)
    assert output.exists() == (result.returncode == 0)


def set_storage_path(url: str, value: str) -> None:
    with emulator_postgres.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE repositories SET storage_path = %s", (value,))


def test_relative_storage_path_rejected(pg_pushed, tmp_path):
    url, store, _ = pg_pushed
    relative = os.path.relpath(store.storage_root / REPOSITORY_KEY)
    set_storage_path(url, relative)

    result = build_from_db(url, tmp_path / "layout")

    assert_clean_failure(result, {5})
    assert "not absolute" in result.stderr


def test_dotdot_storage_path_no_crash(pg_pushed, tmp_path):
    url, store, _ = pg_pushed
    real = store.storage_root / REPOSITORY_KEY
    set_storage_path(url, f"{real}/../{REPOSITORY_KEY}")
    output = tmp_path / "layout"

    result = build_from_db(url, output)

    # The path names the real folder, so building or rejecting are both sound.
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 5), result.stderr


def test_storage_path_symlink_rejected(pg_pushed, tmp_path):
    url, store, _ = pg_pushed
    link = tmp_path / "linked-storage"
    link.symlink_to(store.storage_root / REPOSITORY_KEY)
    set_storage_path(url, str(link))

    result = build_from_db(url, tmp_path / "layout")

    assert_clean_failure(result, {5})


def test_storage_path_missing_is_metadata(pg_pushed, tmp_path):
    url, _, _ = pg_pushed
    set_storage_path(url, str(tmp_path / "gone"))

    result = build_from_db(url, tmp_path / "layout")

    assert_clean_failure(result, {4})


def test_s3_backend_is_missing_metadata(pg_pushed, tmp_path):
    url, _, _ = pg_pushed
    run_sql(url, "UPDATE repositories SET storage_backend = 's3'")

    result = run_cli(
        "build", "--db", url, "--image", IMAGE_NAME, "--tag", "single",
        "--output", tmp_path / "layout", "--json",
    )

    assert_clean_failure(result, {4})
    error = json.loads(result.stdout)["error"]
    assert error["reason"] == "unsupported-storage-backend"
    assert "s3" in error["message"]


def test_storage_path_is_a_file_rejected(pg_pushed, tmp_path):
    url, _, _ = pg_pushed
    plain = tmp_path / "plain-file"
    plain.write_text("not a folder")
    set_storage_path(url, str(plain))

    result = build_from_db(url, tmp_path / "layout")

    assert_clean_failure(result, {5})


# Hostile scanners

FAKES = Path(__file__).resolve().parent / "fake_scanners"

# A stand-in syft written per test. It writes a valid report through the
# helpers of fake_scanners/fake_scanner.py, then does what HOSTILE_MODE selects.
HOSTILE_SCANNER = '''#!{python}
"""STAND-IN SCANNER for tests: this is not syft."""
import json, os, signal, sys, time
sys.path.insert(0, {fakes!r})
from fake_scanner import output_paths, syft_report

mode = os.environ["HOSTILE_MODE"]
report = output_paths(sys.argv)["syft-json"]
good = json.dumps(syft_report(["base-files", "tar"], 2))
if mode == "invalid-json":
    report.write_text("{{not json")
elif mode == "fifo-report":
    os.mkfifo(report)
elif mode == "symlink-report":
    os.symlink(os.environ["OUTSIDE_REPORT"], report)
elif mode == "huge-report":
    with report.open("w") as handle:
        handle.write(good[:-1] + ', "padding": "')
        chunk = "a" * (1 << 20)
        for _ in range(int(os.environ["REPORT_MIB"])):
            handle.write(chunk)
        handle.write('"}}')
elif mode == "stderr-flood":
    report.write_text(good)
    line = b"x" * 1000 + b"\\n"
    for _ in range(200_000):
        os.write(2, line)
    os.write(2, b"y" * (64 << 20))
elif mode == "orphan":
    report.write_text(good)
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    with open(os.environ["ORPHAN_PIDFILE"], "w") as handle:
        handle.write(str(child))
elif mode == "signal":
    report.write_text(good)
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(0)
'''


@pytest.fixture
def hostile_scanner(tmp_path) -> Path:
    path = tmp_path / "hostile_scanner.py"
    path.write_text(HOSTILE_SCANNER.format(python=sys.executable, fakes=str(FAKES)))
    path.chmod(0o755)
    return path


def run_scan(pushed, scanner: Path, workspace: Path, mode: str, timeout=120, **env):
    """Run ``ocilayout scan`` with the hostile stand-in; return (result, peak RSS KiB)."""
    workspace.mkdir(exist_ok=True)

    argv = [
        sys.executable, "-m", "ocilayout", "scan",
        "--store", pushed.store.root, "--image", pushed.image, "--tag", pushed.tag,
        "--scanner-path", scanner, "--workspace", workspace, "--timeout", "60",
        "--json",
    ]
    # A wrapper process measures the peak memory of the scan alone.
    wrapper = (
        "import resource, subprocess, sys\n"
        "result = subprocess.run(sys.argv[1:])\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stderr.write(f'\\nPEAK_RSS_KIB={peak}\\n')\n"
        "sys.exit(result.returncode)\n"
    )

    # The wrapper gets its own process group, so a hung scan is stopped
    # whole: the wrapper, ocilayout and anything left of the scanner.
    process = subprocess.Popen(
        [sys.executable, "-c", wrapper, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HOSTILE_MODE": mode, **env},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    peak = int(re.search(r"PEAK_RSS_KIB=(\d+)", result.stderr)[1])
    return result, peak


def assert_failed_closed(result, workspace: Path, codes=(6,)) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode in codes, (result.returncode, result.stdout[-2000:])
    assert list(workspace.iterdir()) == []


def test_scan_invalid_json_report(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"

    result, _ = run_scan(pushed_single, hostile_scanner, workspace, "invalid-json")

    assert_failed_closed(result, workspace)
    assert json.loads(result.stdout)["error"]["kind"] == "unreadable-report"


def test_scan_killed_by_signal(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"

    result, _ = run_scan(pushed_single, hostile_scanner, workspace, "signal")

    assert_failed_closed(result, workspace)
    assert json.loads(result.stdout)["error"]["returncode"] == -signal.SIGKILL


def test_scan_stderr_flood_bounded(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"

    result, peak = run_scan(pushed_single, hostile_scanner, workspace, "stderr-flood")

    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stdout[-2000:]
    assert list(workspace.iterdir()) == []
    assert peak < 200 * 1024


def test_scan_fifo_report_no_hang(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"

    try:
        result, _ = run_scan(
            pushed_single, hostile_scanner, workspace, "fifo-report", timeout=45
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scan hung reading a FIFO report")
    assert_failed_closed(result, workspace)


def test_scan_symlink_report_rejected(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"
    outside = tmp_path / "outside-report.json"
    sys.path.insert(0, str(FAKES))
    from fake_scanner import syft_report

    outside.write_text(json.dumps(syft_report(["planted"], 2)))

    result, _ = run_scan(
        pushed_single, hostile_scanner, workspace, "symlink-report",
        OUTSIDE_REPORT=str(outside),
    )

    assert_failed_closed(result, workspace)


def test_scan_huge_report_memory_bounded(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"

    result, peak = run_scan(
        pushed_single, hostile_scanner, workspace, "huge-report", REPORT_MIB="256"
    )

    assert "Traceback" not in result.stderr
    assert list(workspace.iterdir()) == []
    assert peak < 200 * 1024, f"peak RSS {peak // 1024} MiB"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_scan_orphan_child_stopped(pushed_single, hostile_scanner, tmp_path):
    workspace = tmp_path / "ws"
    pidfile = tmp_path / "orphan.pid"

    result, _ = run_scan(
        pushed_single, hostile_scanner, workspace, "orphan",
        ORPHAN_PIDFILE=str(pidfile),
    )
    orphan = int(pidfile.read_text())
    try:
        assert "Traceback" not in result.stderr
        assert result.returncode in (0, 6)
        assert list(workspace.iterdir()) == []
        assert not pid_alive(orphan)
    finally:
        if pid_alive(orphan):
            os.kill(orphan, signal.SIGKILL)


# Hostile layouts for check, --layout and --registry-root

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_image() -> tuple[bytes, list[bytes]]:
    """Return a manifest body and its config and one plain tar layer."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("etc/hello")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"hi\n"))
    layer = buffer.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer)}"]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{sha256(config)}", "size": len(config),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": f"sha256:{sha256(layer)}", "size": len(layer),
        }],
    }).encode()
    return manifest, [config, layer]


def descriptor(digest: str, size: object, media_type: str = MANIFEST, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def write_layout(root: Path, entries: list | None = None) -> str:
    """Write a valid one-image layout; return the manifest digest."""
    manifest, blobs = tiny_image()
    (root / "blobs" / "sha256").mkdir(parents=True)
    for blob in (manifest, *blobs):
        (root / "blobs" / "sha256" / sha256(blob)).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    digest = f"sha256:{sha256(manifest)}"
    if entries is None:
        entries = [descriptor(
            digest, len(manifest),
            platform={"os": "linux", "architecture": "amd64"},
            annotations={REF_NAME: "latest"},
        )]
    write_index(root, entries)
    return digest


def write_index(root: Path, entries: list) -> None:
    document = {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}
    (root / "index.json").write_text(json.dumps(document))


def check_codes(root: Path) -> tuple[int, set[str]]:
    result = run_cli("check", root, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    errors = {p["code"] for p in report["problems"] if p["severity"] == "error"}
    return result.returncode, errors


def test_check_tiny_layout_valid(tmp_path):
    write_layout(tmp_path)

    assert check_codes(tmp_path) == (0, set())


RAW_INDEXES = {
    "nan": (b'{"schemaVersion": NaN, "manifests": []}', "json-invalid"),
    "duplicate-key": (b'{"schemaVersion": 2, "schemaVersion": 2, "manifests": []}', "json-duplicate-key"),
    "not-utf8": (b'{"schemaVersion": 2, "manifests": [], "x": "\xff"}', "json-invalid"),
    "deep": (b"[" * 200_000 + b"]" * 200_000, "json-invalid"),
    "huge": (b'{"x": "' + b"a" * (5 << 20) + b'"}', "json-too-large"),
    "huge-integer": (b'{"x": ' + b"9" * 5000 + b"}", "json-invalid"),
}


@pytest.mark.parametrize("case", sorted(RAW_INDEXES))
def test_check_hostile_index_bytes(tmp_path, case):
    data, code = RAW_INDEXES[case]
    write_layout(tmp_path)
    (tmp_path / "index.json").write_bytes(data)

    returncode, errors = check_codes(tmp_path)

    assert returncode == 5
    assert code in errors


@pytest.mark.parametrize(
    "size", [-1, 1.0, True, 2**63, 2**64, "10", None], ids=repr
)
def test_check_invalid_sizes(tmp_path, size):
    digest = write_layout(tmp_path)
    write_index(tmp_path, [descriptor(digest, size)])

    returncode, errors = check_codes(tmp_path)

    assert returncode == 5
    assert "size-invalid" in errors


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "A" * 64, "sha512:" + "a" * 64, "SHA256:" + "a" * 64, "sha256:" + "a" * 63],
)
def test_check_invalid_digests(tmp_path, digest):
    write_layout(tmp_path)
    write_index(tmp_path, [descriptor(digest, 10)])

    returncode, errors = check_codes(tmp_path)

    assert returncode == 5
    assert "digest-invalid" in errors


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def make_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    "make, code",
    [(make_fifo, "blob-not-regular"), (make_socket, "blob-not-regular"),
     (make_directory, "blob-not-regular")],
    ids=["fifo", "socket", "directory"],
)
def test_check_special_blob_files(make, code):
    # A short root keeps the socket path under the AF_UNIX length limit.
    with tempfile.TemporaryDirectory(prefix="hostile2-") as folder:
        root = Path(folder)
        write_layout(root)
        encoded = "c" * 64
        make(root / "blobs" / "sha256" / encoded)
        write_index(root, [descriptor(f"sha256:{encoded}", 10)])

        returncode, errors = check_codes(root)

    assert returncode == 5
    assert code in errors


def test_check_symlink_blob_not_followed(tmp_path):
    root = tmp_path / "layout"
    root.mkdir()
    write_layout(root)
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    encoded = sha256(b"secret")
    (root / "blobs" / "sha256" / encoded).symlink_to(outside)
    write_index(root, [descriptor(f"sha256:{encoded}", 6, "application/octet-stream")])

    returncode, errors = check_codes(root)

    assert returncode == 5
    assert "blob-symlink" in errors


@pytest.mark.parametrize("name", ["index.json", "oci-layout"])
def test_check_fifo_layout_file_no_hang(tmp_path, name):
    write_layout(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)

    returncode, errors = check_codes(tmp_path)

    assert returncode == 5
    assert "file-not-regular" in errors


def test_check_index_cycle_reported(tmp_path):
    write_layout(tmp_path)
    first, second = "a" * 64, "b" * 64
    bodies = {}
    for name, other in ((first, second), (second, first)):
        body = json.dumps({
            "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [descriptor(f"sha256:{other}", 0, INDEX)],
        }).encode()
        (tmp_path / "blobs" / "sha256" / name).write_bytes(body)
        bodies[name] = body
    write_index(tmp_path, [descriptor(f"sha256:{first}", len(bodies[first]), INDEX)])

    returncode, errors = check_codes(tmp_path)

    assert returncode == 5
    assert "index-cycle" in errors


def build_args(*source: object) -> list:
    return ["build", *source, "--no-cache", "--json"]


def run_build(tmp_path: Path, *source: object):
    output = tmp_path / "out"
    result = run_cli(*build_args(*source), "--output", output)
    assert "Traceback" not in result.stderr, result.stderr
    return result, output


def layout_with(tmp_path: Path, change) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    write_layout(root)
    change(root)
    return root


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def move_out_and_link(path: Path) -> None:
    outside = path.parent.parent / f"outside-{path.name}"
    path.rename(outside)
    path.symlink_to(outside)


LAYOUT_CASES = {
    "index-is-list": (lambda r: (r / "index.json").write_text("[]"), 5),
    "index-nan": (lambda r: (r / "index.json").write_text('{"schemaVersion": NaN}'), 5),
    "oci-layout-list": (lambda r: (r / "oci-layout").write_text("[]"), 5),
    "oci-layout-fifo": (lambda r: replace_with_fifo(r / "oci-layout"), 5),
    "index-fifo": (lambda r: replace_with_fifo(r / "index.json"), 5),
    "index-symlink": (lambda r: move_out_and_link(r / "index.json"), 5),
    "blobs-symlink": (lambda r: move_out_and_link(r / "blobs"), 5),
    "no-index": (lambda r: (r / "index.json").unlink(), 2),
    "manifest-missing": (
        lambda r: [p.unlink() for p in (r / "blobs" / "sha256").iterdir()
                   if p.stat().st_size > 400 and b"layers" in p.read_bytes()],
        4,
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_layout_source_hostile(tmp_path, case):
    change, code = LAYOUT_CASES[case]
    root = layout_with(tmp_path, change)

    result, output = run_build(tmp_path, "--layout", root, "--image", "x", "--tag", "latest")

    assert result.returncode == code, result.stdout
    assert not output.exists()


def test_layout_source_missing_dir(tmp_path):
    result, _ = run_build(tmp_path, "--layout", tmp_path / "nope", "--image", "x", "--tag", "latest")

    assert result.returncode == 2


def test_layout_duplicate_ref_ambiguous(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    digest = write_layout(root)
    index = json.loads((root / "index.json").read_text())
    twin = dict(index["manifests"][0], digest="sha256:" + "a" * 64)
    write_index(root, [*index["manifests"], twin])

    result, _ = run_build(tmp_path, "--layout", root, "--image", "x", "--tag", "latest")

    assert result.returncode == 3
    assert digest in json.loads(result.stdout)["error"]["candidates"]


def test_layout_hostile_ref_name_sanitized(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    write_layout(root)
    index = json.loads((root / "index.json").read_text())
    index["manifests"][0]["annotations"][REF_NAME] = "../../etc/passwd"
    write_index(root, index["manifests"])

    result, output = run_build(
        tmp_path, "--layout", root, "--image", "x", "--tag", "../../etc/passwd"
    )

    assert result.returncode == 0, result.stdout
    ref = json.loads((output / "index.json").read_text())["manifests"][0]["annotations"][REF_NAME]
    assert "/" not in ref
    assert ".." not in ref


def test_layout_index_of_same_layout(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    write_layout(root)
    inner = (root / "index.json").read_bytes()
    (root / "blobs" / "sha256" / sha256(inner)).write_bytes(inner)
    write_index(root, [descriptor(
        f"sha256:{sha256(inner)}", len(inner), INDEX, annotations={REF_NAME: "latest"}
    )])

    result, _ = run_build(tmp_path, "--layout", root, "--image", "x", "--tag", "latest")

    assert result.returncode == 0, result.stdout


def write_registry(root: Path, name: str = "demo/app", tag: str = "latest") -> tuple[str, list[str]]:
    """Write the storage tree distribution 2.x keeps for one image."""
    manifest, blobs = tiny_image()
    v2 = root / "docker" / "registry" / "v2"
    for blob in (manifest, *blobs):
        data = v2 / "blobs" / "sha256" / sha256(blob)[:2] / sha256(blob) / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(blob)
    repo = v2 / "repositories" / name

    def link(path: Path, digest: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest)

    digest = f"sha256:{sha256(manifest)}"
    link(repo / "_manifests" / "revisions" / "sha256" / sha256(manifest) / "link", digest)
    link(repo / "_manifests" / "tags" / tag / "current" / "link", digest)
    for blob in blobs:
        link(repo / "_layers" / "sha256" / sha256(blob) / "link", f"sha256:{sha256(blob)}")
    return digest, [sha256(blob) for blob in blobs]


V2 = Path("docker", "registry", "v2")
TAG_LINK = V2 / "repositories/demo/app/_manifests/tags/latest/current/link"


def registry_with(tmp_path: Path, change) -> Path:
    root = tmp_path / "registry"
    digest, blobs = write_registry(root)
    change(root, digest, blobs)
    return root


REGISTRY_CASES = {
    "ok": (lambda r, d, b: None, 0),
    "tag-link-garbage": (lambda r, d, b: (r / TAG_LINK).write_bytes(b"\xff\x00junk"), 5),
    "tag-link-huge": (lambda r, d, b: (r / TAG_LINK).write_bytes(b"sha256:" + b"a" * (8 << 20)), 5),
    "tag-link-fifo": (lambda r, d, b: replace_with_fifo(r / TAG_LINK), 5),
    "tag-link-dir": (lambda r, d, b: ((r / TAG_LINK).unlink(), (r / TAG_LINK).mkdir()), 5),
    "revision-link-other": (
        lambda r, d, b: (r / V2 / "repositories/demo/app/_manifests/revisions/sha256"
                         / d.split(":")[1] / "link").write_text("sha256:" + "a" * 64),
        5,
    ),
    "repositories-symlink": (lambda r, d, b: move_out_and_link(r / V2 / "repositories"), 5),
    "v2-symlink": (lambda r, d, b: move_out_and_link(r / "docker"), 5),
    "layer-link-missing": (
        lambda r, d, b: (r / V2 / "repositories/demo/app/_layers/sha256" / b[1] / "link").unlink(),
        4,
    ),
    "data-symlink": (
        lambda r, d, b: move_out_and_link(r / V2 / "blobs/sha256" / b[1][:2] / b[1] / "data"),
        5,
    ),
    "data-fifo": (
        lambda r, d, b: replace_with_fifo(r / V2 / "blobs/sha256" / b[1][:2] / b[1] / "data"),
        5,
    ),
}


@pytest.mark.parametrize("case", sorted(REGISTRY_CASES))
def test_registry_tree_hostile(tmp_path, case):
    change, code = REGISTRY_CASES[case]
    root = registry_with(tmp_path, change)

    result, output = run_build(
        tmp_path, "--registry-root", root, "--image", "demo/app", "--tag", "latest"
    )

    assert result.returncode == code, result.stdout
    assert output.exists() == (code == 0)


def test_registry_missing_root(tmp_path):
    result, _ = run_build(
        tmp_path, "--registry-root", tmp_path / "nope", "--image", "demo/app", "--tag", "latest"
    )

    assert result.returncode == 2


@pytest.mark.parametrize(
    "image, tag", [("../../etc", "latest"), ("demo/app", "../../../_layers")]
)
def test_registry_traversal_names_not_found(tmp_path, image, tag):
    root = registry_with(tmp_path, lambda r, d, b: None)

    result, _ = run_build(tmp_path, "--registry-root", root, "--image", image, "--tag", tag)

    assert result.returncode == 3
