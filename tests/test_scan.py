"""The scan pipeline: real syft on local layouts and through the emulator registry.

Real syft covers both real paths. Stand-in scanners from tests/fake_scanners
(labelled as such there) cover what a real scanner does not do on demand
(fatal stderr with exit 0, an empty report, hanging) and the grype and trivy
profiles, which are not installed here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.imagegen import host_platform
from emulator.push import push
from emulator.serve import RegistryServer
from ocilayout.scanners import PROFILES, classify_line
from ocilayout.token import (
    TokenError,
    load_public_key,
    load_signing_key,
    mint_token,
    verify_token,
)

from .helpers import ROOT, tool

FAKES = Path(__file__).resolve().parent / "fake_scanners"
FAKE_SCANNER = FAKES / "fake_scanner.py"
RECORD_WRAPPER = FAKES / "record_argv.py"
REPOSITORY = "docker-local/demo/app"
SCAN_COMMAND = [sys.executable, "-m", "ocilayout", "scan"]

pytestmark = pytest.mark.consumers


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path
    other_private: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    """An EC P-256 key pair the registry trusts and an RSA key it does not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    folder = tmp_path_factory.mktemp("keys")
    trusted = ec.generate_private_key(ec.SECP256R1())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    none = serialization.NoEncryption()
    (folder / "trusted.pem").write_bytes(trusted.private_bytes(pem, pkcs8, none))
    (folder / "other.pem").write_bytes(other.private_bytes(pem, pkcs8, none))
    (folder / "trusted.pub.pem").write_bytes(
        trusted.public_key().public_bytes(
            pem, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Keys(
        folder / "trusted.pem", folder / "trusted.pub.pem", folder / "other.pem"
    )


@contextmanager
def serving(store_root: Path, keys: Keys):
    """Run the emulator registry on a free loopback port for one test."""
    server = RegistryServer(store_root, load_public_key(keys.public), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_scan(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SCAN_COMMAND, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def scan_json(*args, env: dict | None = None) -> tuple[int, dict, str]:
    result = run_scan(*args, "--json", env=env)
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(
            f"scan printed no JSON (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        ) from None
    return result.returncode, document, result.stderr


def image_args(pushed) -> list:
    return ["--store", pushed.store.root, "--image", pushed.image, "--tag", pushed.tag]


def registry_args(server: RegistryServer, keys: Keys | None) -> list:
    args = ["--registry", server.authority, "--registry-insecure"]
    if keys is None:
        return [*args, "--anonymous"]
    return [*args, "--token-key", keys.private]


def delete_blob_refs(store, manifest_digest: str) -> None:
    """Make local metadata missing: drop the manifest's manifest_blob_refs rows."""
    connection = sqlite3.connect(store.database_path)
    with connection:
        deleted = connection.execute(
            "DELETE FROM manifest_blob_refs WHERE manifest_digest = ?",
            (manifest_digest,),
        ).rowcount
    connection.close()
    assert deleted > 0


def served_requests(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "emulator.serve" and '"GET ' in record.getMessage()
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_env(mode: str, record: Path | None = None, **extra: str) -> dict:
    env = {"FAKE_SCANNER_MODE": mode, **extra}
    if record is not None:
        env["FAKE_SCANNER_RECORD"] = str(record)
    return env


# Real syft: the local path


def test_local_scan_needs_no_registry(pushed_single, keys, tmp_path):
    down = f"127.0.0.1:{closed_port()}"

    code, document, stderr = scan_json(
        *image_args(pushed_single),
        "--registry",
        down,
        "--registry-insecure",
        "--token-key",
        keys.private,
    )

    assert code == 0, document
    assert document["ok"] is True
    assert document["source"] == "local"
    assert document["target"].startswith("oci-dir:")
    assert document["fallback"] is None
    assert document["credentials"] is None
    assert document["manifest_digest"] == pushed_single.digest
    assert document["package_count"] == pushed_single.source.package_count
    names = {package["name"] for package in document["packages"]}
    assert names == {package.name for package in pushed_single.source.packages}
    assert down not in stderr


def test_local_scan_library_call(pushed_single, tmp_path):
    from ocilayout.scan import scan_image

    workspace = tmp_path / "workspace"
    workspace.mkdir()

    outcome = scan_image(
        pushed_single.store.root,
        image=pushed_single.image,
        tag=pushed_single.tag,
        workspace=workspace,
    )

    assert outcome.source == "local"
    assert outcome.repository == "docker-local"
    assert outcome.report.package_count == pushed_single.source.package_count
    assert outcome.report.vulnerabilities is None
    assert list(workspace.iterdir()) == []


# Real syft: the registry fallback against the emulator endpoint


def test_fallback_without_credentials_unauthorized(pushed_single, keys, caplog):
    caplog.set_level("INFO", logger="emulator.serve")
    delete_blob_refs(pushed_single.store, pushed_single.digest)

    with serving(pushed_single.store.root, keys) as server:
        code, document, _ = scan_json(
            *image_args(pushed_single), *registry_args(server, None)
        )

    assert code == 6
    error = document["error"]
    assert error["type"] == "ScannerFailedError"
    assert error["kind"] == "unauthorized"
    assert "UNAUTHORIZED" in error["message"]
    assert error["target"] == (
        f"registry:{server.authority}/{REPOSITORY}@{pushed_single.digest}"
    )
    assert error["fallback"]["reason"] == "no-blob-rows"
    assert "--token-key" in error["hint"]
    assert any(" 401 " in line for line in served_requests(caplog))


def test_fallback_with_token_matches_local(pushed_single, keys, caplog):
    caplog.set_level("INFO", logger="emulator.serve")
    code, local, _ = scan_json(*image_args(pushed_single))
    assert code == 0, local
    delete_blob_refs(pushed_single.store, pushed_single.digest)

    with serving(pushed_single.store.root, keys) as server:
        code, document, _ = scan_json(
            *image_args(pushed_single), *registry_args(server, keys)
        )

    assert code == 0, document
    assert document["source"] == "registry"
    assert document["target"] == (
        f"registry:{server.authority}/{REPOSITORY}@{pushed_single.digest}"
    )
    assert document["package_count"] == local["package_count"]
    assert {p["name"] for p in document["packages"]} == {
        p["name"] for p in local["packages"]
    }
    fallback = document["fallback"]
    assert fallback["reason"] == "no-blob-rows"
    assert fallback["missing_digest"] == pushed_single.digest
    assert pushed_single.digest in fallback["message"]
    assert document["credentials"]["scope"] == f"repository:{REPOSITORY}:pull"
    assert document["credentials"]["environment"] == [
        "SYFT_REGISTRY_AUTH_AUTHORITY",
        "SYFT_REGISTRY_AUTH_TOKEN",
    ]
    served = served_requests(caplog)
    assert any("/manifests/" in line and " 200 " in line for line in served)
    assert any("/blobs/" in line and " 200 " in line for line in served)
    assert not any("/manifests/single" in line for line in served)


def test_fallback_index_names_child_digest(pushed_multi, keys):
    child = pushed_multi.source.manifests[host_platform()]
    delete_blob_refs(pushed_multi.store, child)

    with serving(pushed_multi.store.root, keys) as server:
        code, document, _ = scan_json(
            *image_args(pushed_multi), *registry_args(server, keys)
        )

    assert code == 0, document
    assert document["manifest_digest"] == child
    assert document["target"] == f"registry:{server.authority}/{REPOSITORY}@{child}"
    assert pushed_multi.digest not in document["target"]
    assert document["fallback"]["target_digest"] == child
    assert document["fallback"]["names_image_manifest"] is True
    assert document["package_count"] == pushed_multi.source.package_count


def test_fallback_by_digest_finds_image_name(pushed_multi, keys):
    """Given only --digest, the fallback takes the image name from the store."""
    child = pushed_multi.source.manifests[host_platform()]
    delete_blob_refs(pushed_multi.store, child)
    by_digest = ["--store", pushed_multi.store.root, "--digest", pushed_multi.digest]

    with serving(pushed_multi.store.root, keys) as server:
        code, document, _ = scan_json(*by_digest, *registry_args(server, keys))

    assert code == 0, document
    assert document["image"] == pushed_multi.image
    assert document["target"] == f"registry:{server.authority}/{REPOSITORY}@{child}"
    assert document["package_count"] == pushed_multi.source.package_count


def test_fallback_by_digest_with_two_image_names(pushed_single, keys):
    """A digest pushed under two image names cannot pick one, so --image is required."""
    push(
        pushed_single.store,
        "docker-local",
        "other/name",
        "copy",
        pushed_single.source.spec,
    )
    delete_blob_refs(pushed_single.store, pushed_single.digest)

    with serving(pushed_single.store.root, keys) as server:
        code, document, _ = scan_json(
            "--store",
            pushed_single.store.root,
            "--digest",
            pushed_single.digest,
            *registry_args(server, keys),
        )

    assert code == 4
    message = document["error"]["message"]
    assert document["error"]["type"] == "FallbackUnavailableError"
    assert pushed_single.image in message
    assert "other/name" in message
    assert "--image" in message


def test_fallback_child_body_missing_names_child(pushed_multi, keys, tmp_path):
    child = pushed_multi.source.manifests[host_platform()]
    local = tmp_path / "local-store"
    local.mkdir()
    shutil.copyfile(pushed_multi.store.database_path, local / "metadata.sqlite3")
    connection = sqlite3.connect(local / "metadata.sqlite3")
    with connection:
        connection.execute(
            "UPDATE artifacts SET is_deleted = 1 WHERE storage_key = ?",
            (f"oci-manifests/{child}",),
        )
    connection.close()

    # The registry serves the intact store; only the local metadata lacks the child.
    with serving(pushed_multi.store.root, keys) as server:
        code, document, _ = scan_json(
            "--store",
            local,
            "--image",
            pushed_multi.image,
            "--tag",
            pushed_multi.tag,
            *registry_args(server, keys),
        )

    assert code == 0, document
    assert document["fallback"]["reason"] == "manifest-body-missing"
    assert document["fallback"]["missing_digest"] == child
    assert document["target"] == f"registry:{server.authority}/{REPOSITORY}@{child}"
    assert document["package_count"] == pushed_multi.source.package_count


def test_fallback_without_database(pushed_single, keys, tmp_path):
    no_database = tmp_path / "no-database"
    no_database.mkdir()
    pinned = [
        "--store",
        no_database,
        "--repo",
        "docker-local",
        "--image",
        pushed_single.image,
        "--digest",
        pushed_single.digest,
    ]

    with serving(pushed_single.store.root, keys) as server:
        by_tag, unpinned, _ = scan_json(
            "--store",
            no_database,
            "--image",
            pushed_single.image,
            "--tag",
            pushed_single.tag,
            *registry_args(server, keys),
        )
        by_digest, document, _ = scan_json(*pinned, *registry_args(server, keys))

    assert by_tag == 4
    assert unpinned["error"]["type"] == "FallbackUnavailableError"
    assert unpinned["error"]["reason"] == "no-database"
    assert "--digest" in unpinned["error"]["message"]
    assert by_digest == 0, document
    assert document["fallback"]["reason"] == "no-database"
    assert document["target"].endswith(f"@{pushed_single.digest}")
    assert document["package_count"] == pushed_single.source.package_count


def test_missing_metadata_without_registry(pushed_single):
    delete_blob_refs(pushed_single.store, pushed_single.digest)

    code, document, _ = scan_json(*image_args(pushed_single))

    assert code == 4
    assert document["error"]["type"] == "MetadataMissingError"
    assert document["error"]["reason"] == "no-blob-rows"
    assert "--registry" in document["error"]["hint"]


def test_integrity_error_never_falls_back(pushed_single, keys, caplog):
    caplog.set_level("INFO", logger="emulator.serve")
    repo = pushed_single.store.repository("docker-local")
    layer = max(
        (repo.storage_path / "oci-blobs").iterdir(), key=lambda p: p.stat().st_size
    )
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))

    with serving(pushed_single.store.root, keys) as server:
        code, document, _ = scan_json(
            *image_args(pushed_single), *registry_args(server, keys)
        )

    assert code == 5
    assert document["error"]["type"] == "DigestMismatchError"
    assert layer.name in document["error"]["message"]
    assert "fallback" not in document["error"]
    assert served_requests(caplog) == []


# The token stays out of argv, logs and output


def test_token_absent_from_argv_logs_json(pushed_single, keys, tmp_path, caplog):
    caplog.set_level("DEBUG")
    record = tmp_path / "record.json"
    delete_blob_refs(pushed_single.store, pushed_single.digest)
    wrapper = {"RECORD_FILE": str(record), "REAL_SCANNER": tool("syft")}

    with serving(pushed_single.store.root, keys) as server:
        result = run_scan(
            *image_args(pushed_single),
            *registry_args(server, keys),
            "--scanner-path",
            RECORD_WRAPPER,
            "--json",
            "--verbose",
            env=wrapper,
        )
        text = run_scan(
            *image_args(pushed_single),
            *registry_args(server, keys),
            "--scanner-path",
            RECORD_WRAPPER,
            "--verbose",
            env=wrapper,
        )

    assert result.returncode == 0, result.stderr
    assert text.returncode == 0, text.stderr
    recorded = json.loads(record.read_text())
    token = recorded["credentials"]["SYFT_REGISTRY_AUTH_TOKEN"]
    assert token.count(".") == 2
    assert "SYFT_REGISTRY_AUTH_AUTHORITY" in recorded["environment_names"]
    assert not any(token in argument for argument in recorded["argv"])
    assert recorded["argv"][1:3] == ["scan", json.loads(result.stdout)["target"]]
    for output in (result.stdout, result.stderr, text.stdout, text.stderr):
        assert token not in output
        assert "eyJ" not in output
    assert token not in caplog.text
    claims = verify_token(
        token,
        load_public_key(keys.public),
        audience=server.service,
        repository=REPOSITORY,
    )
    assert claims["access"] == [
        {"type": "repository", "name": REPOSITORY, "actions": ["pull"]}
    ]


def test_token_redacted_from_scanner_stderr(pushed_single, keys, tmp_path):
    leak = FAKES / "leak_token.py"
    delete_blob_refs(pushed_single.store, pushed_single.digest)
    record = tmp_path / "record.json"

    with serving(pushed_single.store.root, keys) as server:
        code, document, stderr = scan_json(
            *image_args(pushed_single),
            *registry_args(server, keys),
            "--scanner-path",
            leak,
            env={"RECORD_FILE": str(record)},
        )

    token = json.loads(record.read_text())["credentials"]["SYFT_REGISTRY_AUTH_TOKEN"]
    assert code == 6
    assert document["error"]["kind"] == "exit-status"
    serialized = json.dumps(document)
    assert token not in serialized
    assert token not in stderr
    assert "[REDACTED]" in document["error"]["stderr"]


# Failing closed


def test_fatal_stderr_fails_closed(pushed_single, tmp_path):
    record = tmp_path / "record.json"

    code, document, _ = scan_json(
        *image_args(pushed_single),
        "--scanner-path",
        FAKE_SCANNER,
        env=fake_env("syft-fatal", record),
    )

    assert code == 6
    assert document["error"]["kind"] == "fatal-stderr"
    assert document["error"]["returncode"] == 0
    assert "unable to read /var/lib/dpkg/status" in document["error"]["message"]
    assert document["error"]["target"].startswith("oci-dir:")
    argv = json.loads(record.read_text())["argv"]
    assert argv[1] == "scan"
    assert argv[2] == document["error"]["target"]


def test_zero_packages_fails_closed(pushed_single):
    code, document, _ = scan_json(
        *image_args(pushed_single),
        "--scanner-path",
        FAKE_SCANNER,
        env=fake_env("syft-empty"),
    )

    assert code == 6
    assert document["error"]["kind"] == "empty-report"
    assert "3 layer(s)" in document["error"]["message"]


def test_zero_packages_allowed_on_request(pushed_single):
    code, document, _ = scan_json(
        *image_args(pushed_single),
        "--scanner-path",
        FAKE_SCANNER,
        "--allow-empty",
        env=fake_env("syft-empty"),
    )

    assert code == 0, document
    assert document["package_count"] == 0


def test_scanner_exit_status_fails(pushed_single):
    code, document, _ = scan_json(
        *image_args(pushed_single),
        "--scanner-path",
        FAKE_SCANNER,
        env=fake_env("exit-3"),
    )

    assert code == 6
    assert document["error"]["kind"] == "exit-status"
    assert document["error"]["returncode"] == 3
    assert "failing on purpose" in document["error"]["stderr"]


@pytest.mark.parametrize(
    "args, env",
    [
        (["--scanner-path", "/nonexistent/syft"], {}),
        ([], {"OCILAYOUT_SYFT": "/nonexistent/syft"}),
        (["--scanner", "trivy"], {"PATH": "/usr/bin:/bin"}),
    ],
    ids=["option", "environment", "not-on-path"],
)
def test_missing_scanner_binary(pushed_single, args, env):
    code, document, _ = scan_json(*image_args(pushed_single), *args, env=env)

    assert code == 7
    assert document["error"]["type"] == "ScannerNotFoundError"
    assert "OCILAYOUT_" in document["error"]["hint"]


# The workspace is removed on every outcome


@pytest.mark.parametrize(
    "case, expected",
    [("success", 0), ("failure", 6), ("timeout", 8)],
)
def test_workspace_removed(pushed_single, tmp_path, case, expected):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    pidfile = tmp_path / "scanner.pid"
    args = [*image_args(pushed_single), "--workspace", workspace]
    env = {}
    if case == "failure":
        args += ["--scanner-path", FAKE_SCANNER]
        env = fake_env("syft-fatal")
    elif case == "timeout":
        args += ["--scanner-path", FAKE_SCANNER, "--timeout", "3"]
        env = fake_env("sleep", FAKE_SCANNER_PIDFILE=str(pidfile))

    code, document, _ = scan_json(*args, env=env)

    assert code == expected, document
    assert list(workspace.iterdir()) == []
    if case == "timeout":
        assert document["error"]["type"] == "ScanTimeoutError"
        assert not _alive(int(pidfile.read_text()))


def test_workspace_removed_on_interrupt(pushed_single, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    pidfile = tmp_path / "scanner.pid"
    env = {**os.environ, **fake_env("sleep", FAKE_SCANNER_PIDFILE=str(pidfile))}
    process = subprocess.Popen(
        [
            *SCAN_COMMAND,
            *map(str, image_args(pushed_single)),
            "--workspace",
            str(workspace),
            "--scanner-path",
            str(FAKE_SCANNER),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started as a background job ignores SIGINT, and so would
        # the child; a terminal's Ctrl-C reaches a process with the default.
        preexec_fn=_default_sigint,
    )
    try:
        _wait_for(pidfile)
        assert list(workspace.iterdir()) != []
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(workspace.iterdir()) == []
    assert not _alive(int(pidfile.read_text()))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


# grype and trivy profiles, on hand-made reports (stand-ins: not installed here)


@pytest.mark.parametrize("scanner", ["grype", "trivy"])
def test_standin_report_parsed(pushed_single, tmp_path, scanner):
    record = tmp_path / "record.json"

    code, document, _ = scan_json(
        *image_args(pushed_single),
        "--scanner",
        scanner,
        "--scanner-path",
        FAKE_SCANNER,
        env=fake_env(scanner, record),
    )

    assert code == 0, document
    assert document["scanner"] == scanner
    assert document["layer_count"] == 2
    found = {match["id"]: match for match in document["vulnerabilities"]}
    glibc = found["CVE-2023-4911"]
    assert glibc["package"] == "libc6"
    assert glibc["version"] == "2.36-9+deb12u1"
    assert glibc["severity"].lower() == "high"
    assert glibc["fixed_versions"][0] == "2.36-9+deb12u3"
    assert glibc["fix_state"] == "fixed"
    argv = json.loads(record.read_text())["argv"]
    layout = document["target"].removeprefix("oci-dir:")
    if scanner == "grype":
        assert document["package_count"] == 3
        assert found["CVE-2005-2541"]["fixed_versions"] == []
        assert found["CVE-2005-2541"]["fix_state"] == "not-fixed"
        assert argv[1] == document["target"]
    else:
        assert document["package_count"] == 3
        assert glibc["fixed_versions"] == ["2.36-9+deb12u3", "2.36-9+deb12u4"]
        assert argv[1:4] == ["image", "--input", layout]


@pytest.mark.parametrize(
    "scanner, variables",
    [
        (
            "grype",
            [
                "GRYPE_REGISTRY_AUTH_AUTHORITY",
                "GRYPE_REGISTRY_AUTH_TOKEN",
                "GRYPE_REGISTRY_INSECURE_USE_HTTP",
            ],
        ),
        ("trivy", ["TRIVY_INSECURE", "TRIVY_REGISTRY_TOKEN"]),
    ],
)
def test_standin_registry_arguments(pushed_single, keys, tmp_path, scanner, variables):
    record = tmp_path / "record.json"
    delete_blob_refs(pushed_single.store, pushed_single.digest)

    with serving(pushed_single.store.root, keys) as server:
        code, document, _ = scan_json(
            *image_args(pushed_single),
            *registry_args(server, keys),
            "--scanner",
            scanner,
            "--scanner-path",
            FAKE_SCANNER,
            env=fake_env(scanner, record),
        )

    assert code == 0, document
    recorded = json.loads(record.read_text())
    reference = f"{server.authority}/{REPOSITORY}@{pushed_single.digest}"
    for name in variables:
        assert name in recorded["environment_names"]
    token = next(iter(recorded["credentials"].values()))
    assert not any(token in argument for argument in recorded["argv"])
    if scanner == "grype":
        assert recorded["argv"][1] == f"registry:{reference}"
    else:
        assert recorded["argv"][1:5] == ["image", "--image-src", "remote", reference]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("[0000] ERROR could not determine source: unexpected EOF", "fatal"),
        ("[0003]  WARN unable to read file /etc/shadow: permission denied", None),
        ("[0001]  INFO cataloging packages", None),
        ("2024-05-01T10:00:00Z\tFATAL\tFatal error\timage scan error", "fatal"),
        ("2024-05-01T10:00:00Z WARN [python] Unable to find python", None),
        ("panic: runtime error: index out of range [3] with length 3", "fatal"),
        ("failed to catalog: unexpected EOF", "fatal"),
        (
            (
                "[0000] ERROR GET http://127.0.0.1:5000/token: UNAUTHORIZED: "
                "authentication required"
            ),
            "unauthorized",
        ),
        ("cataloged 4 packages", None),
    ],
)
def test_stderr_line_classified(line, expected):
    assert classify_line(line) == expected


def test_profiles_cover_three_scanners():
    assert sorted(PROFILES) == ["grype", "syft", "trivy"]


# The emulator endpoint


def _get(url: str, token: str | None = None, method: str = "GET"):
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _token(keys: Keys, server: RegistryServer, repository: str = REPOSITORY, **kw):
    key = load_signing_key(kw.pop("key", keys.private))
    return mint_token(key, repository, audience=server.service, **kw).value


def test_registry_challenges_without_token(pushed_single, keys):
    with serving(pushed_single.store.root, keys) as server:
        base = _get(f"{server.url}/v2/")
        manifest = _get(f"{server.url}/v2/{REPOSITORY}/manifests/single")
        realm = _get(f"{server.url}/token?scope=repository:{REPOSITORY}:pull")

    assert server.server_address[0] == "127.0.0.1"
    assert base[0] == 401
    challenge = base[1]["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{server.url}/token"' in challenge
    assert f'service="{server.service}"' in challenge
    assert manifest[0] == 401
    assert f'scope="repository:{REPOSITORY}:pull"' in manifest[1]["WWW-Authenticate"]
    assert json.loads(manifest[2])["errors"][0]["code"] == "UNAUTHORIZED"
    assert realm[0] == 401


def test_registry_serves_with_valid_token(pushed_single, keys):
    import hashlib

    with serving(pushed_single.store.root, keys) as server:
        token = _token(keys, server)
        base = _get(f"{server.url}/v2/", token)
        manifest = _get(f"{server.url}/v2/{REPOSITORY}/manifests/single", token)
        config = json.loads(manifest[2])["config"]["digest"]
        blob = _get(f"{server.url}/v2/{REPOSITORY}/blobs/{config}", token, "HEAD")
        missing = _get(f"{server.url}/v2/{REPOSITORY}/manifests/nope", token)
        push = _get(f"{server.url}/v2/{REPOSITORY}/manifests/x", token, "PUT")

    assert base[0] == 200
    assert manifest[0] == 200
    assert manifest[1]["Docker-Content-Digest"] == pushed_single.digest
    assert "sha256:" + hashlib.sha256(manifest[2]).hexdigest() == pushed_single.digest
    assert blob[0] == 200
    assert blob[1]["Docker-Content-Digest"] == config
    assert int(blob[1]["Content-Length"]) > 0
    assert missing[0] == 404
    assert push[0] == 405


@pytest.mark.parametrize(
    "case", ["other-repository", "expired", "untrusted-key", "garbage"]
)
def test_registry_rejects_bad_token(pushed_single, keys, case):
    with serving(pushed_single.store.root, keys) as server:
        if case == "other-repository":
            token = _token(keys, server, "docker-local/other")
        elif case == "expired":
            token = _token(keys, server, now=time.time() - 3600, ttl=60)
        elif case == "untrusted-key":
            token = _token(keys, server, key=keys.other_private)
        else:
            token = "not.a.token"
        status, headers, body = _get(
            f"{server.url}/v2/{REPOSITORY}/manifests/single", token
        )

    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"


def test_serve_command_binds_loopback(pushed_single, keys):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "serve",
            "--store",
            str(pushed_single.store.root),
            "--port",
            "0",
            "--public-key",
            str(keys.public),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        status, headers, _ = _get(f"{url}/v2/")
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert url.startswith("http://127.0.0.1:")
    assert status == 401
    assert "Bearer realm=" in headers["WWW-Authenticate"]
    assert process.returncode == 0


# Tokens


@pytest.mark.parametrize("which", ["private", "other_private"])
def test_token_round_trip(keys, which):
    key = load_signing_key(getattr(keys, which))
    minted = mint_token(key, REPOSITORY, audience="registry.test")
    public = key.key.public_key()

    claims = verify_token(
        minted.value, public, audience="registry.test", repository=REPOSITORY
    )

    assert claims["aud"] == "registry.test"
    assert minted.value not in repr(minted)
    with pytest.raises(TokenError, match="does not grant"):
        verify_token(minted.value, public, audience="registry.test", repository="x/y")
    with pytest.raises(TokenError, match="audience"):
        verify_token(minted.value, public, audience="elsewhere")


def test_token_algorithm_none_rejected(keys):
    import base64

    def part(value: dict) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    forged = ".".join(
        [
            part({"alg": "none", "typ": "JWT"}),
            part({"aud": "registry.test", "exp": 2**40, "nbf": 0}),
            "",
        ]
    )
    public = load_public_key(keys.public)

    with pytest.raises(TokenError, match="algorithm"):
        verify_token(forged, public, audience="registry.test")


def test_signing_key_from_environment(keys):
    pem = keys.private.read_text()

    key = load_signing_key(environ={"OCILAYOUT_TOKEN_KEY": pem})

    assert key.algorithm == "ES256"
    with pytest.raises(TokenError, match="no token signing key"):
        load_signing_key(environ={})


def test_scan_modules_import_stdlib_only():
    code = (
        "import sys, ocilayout, ocilayout.scan, ocilayout.scanners, ocilayout.token;"
        "print(sorted(m for m in ('cryptography', 'typer') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def run_on_terminal(*args) -> tuple[int, str, str]:
    """Run a scan whose stderr is a pseudo-terminal; return (code, stdout, stderr)."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*SCAN_COMMAND, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout = process.stdout.read().decode()
    process.wait(timeout=120)
    os.close(leader)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_terminal_shows_build_and_scan_progress(pushed_single):
    code, stdout, stderr = run_on_terminal(*image_args(pushed_single), "--no-cache")

    assert code == 0, stderr
    assert "placed 4/4 blobs" in stderr
    assert "scanning with syft:" in stderr
    assert f"packages  {pushed_single.source.package_count}" in stdout


def test_terminal_json_has_no_progress(pushed_single):
    code, stdout, stderr = run_on_terminal(*image_args(pushed_single), "--json")

    assert code == 0, stderr
    assert "scanning with" not in stderr
    assert "verified" not in stderr
    assert json.loads(stdout)["ok"] is True
