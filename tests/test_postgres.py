"""The PostgreSQL metadata source against a real server.

Images from the shared fixtures are pushed into a database with the
production column types, built into layouts, and read back by skopeo, umoci
and syft. Connection handling is checked against the real server: passwords
from PGPASSWORD and .pgpass, a read-only snapshot, timeouts. With a million
blob rows, every query the source issues must use an index.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from emulator import postgres as emulator_postgres
from emulator.imagegen import host_platform
from ocilayout.build import build_layout
from ocilayout.errors import IntegrityError, MetadataMissingError, UsageError
from ocilayout.platforms import matches, parse_platform
from ocilayout.postgres import PostgresMetadata

from .conftest import IMAGE_NAME, REPOSITORY_KEY
from .helpers import run_json, snapshot_tree, syft_packages, tool

# The PostgreSQL server fixtures, registered once for the whole session.
pytest_plugins = ("tests.pg_server",)

BIG_TABLES = {
    "oci_blobs",
    "manifest_blob_refs",
    "artifacts",
    "oci_tags",
    "oci_manifest_refs",
    "oci_manifest_subjects",
}
SYNTHETIC_BLOB_ROWS = 1_000_000
# Plan nodes that read a table through an index; a Bitmap Heap Scan reads
# the rows a Bitmap Index Scan below it found.
INDEX_NODE_TYPES = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}


@pytest.fixture
def pg_url(postgres_server, postgres_database) -> str:
    return postgres_server.url(postgres_database)


@pytest.fixture
def pg_store(pg_url, tmp_path) -> emulator_postgres.PostgresStore:
    return emulator_postgres.PostgresStore.init(tmp_path / "store", pg_url)


def push_image(store, image, tag: str) -> str:
    return emulator_postgres.push(store, REPOSITORY_KEY, IMAGE_NAME, tag, image.spec)


def read_index(path: Path) -> dict:
    return json.loads((path / "index.json").read_text())


def assert_valid_layout(path: Path) -> None:
    from ocilayout.check import check_layout

    report = check_layout(path)
    assert report.ok, [str(problem) for problem in report.errors]


def grant_reader(server, url: str) -> None:
    with emulator_postgres.connect(url, autocommit=True) as connection:
        connection.execute(
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {server.password_user}"
        )


def without_password_sources(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


# Round trips through real consumers


def test_single_round_trip(pg_store, pg_url, real_image_single, tmp_path):
    digest = push_image(pg_store, real_image_single, "single")
    before = snapshot_tree(pg_store.root)
    output = tmp_path / "layout"

    with PostgresMetadata(pg_url) as source:
        result = build_layout(source, output, image=IMAGE_NAME, tag="single")

    assert result.manifest_digest == digest
    entry = read_index(output)["manifests"][0]
    assert entry["digest"] == digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "single"
    assert snapshot_tree(pg_store.root) == before
    assert_valid_layout(output)

    inspect = subprocess.run(
        [tool("skopeo"), "inspect", f"oci:{output}:single"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Digest"] == digest

    bundle = tmp_path / "bundle"
    unpack = subprocess.run(
        [tool("umoci"), "unpack", "--rootless", "--image", f"{output}:single", bundle],
        check=False,
        capture_output=True,
        text=True,
    )
    assert unpack.returncode == 0, unpack.stderr
    assert (bundle / "rootfs" / "var" / "lib" / "dpkg" / "status").is_file()

    packages = syft_packages(result.target)
    assert len(packages) == real_image_single.package_count
    found = {package["name"] for package in packages}
    assert found == {package.name for package in real_image_single.packages}


def run_emulator(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emulator", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_command_line_round_trip(pg_url, real_image_multi, tmp_path):
    """Both command lines, as a user runs them: emulator init and push with
    --db, then ocilayout build --db, then syft on the layout."""
    store = tmp_path / "store"
    created = run_emulator("init", store, "--db", pg_url)
    assert created.returncode == 0, created.stderr
    pushed = run_emulator(
        "push", "--store", store, "--db", pg_url, "--repo", REPOSITORY_KEY,
        "--image", IMAGE_NAME, "--tag", "multi", real_image_multi.spec,
    )
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.strip()
    assert digest == real_image_multi.digest
    assert not (store / "metadata.sqlite3").exists()

    output = tmp_path / "layout"
    code, summary = run_json(
        "build", "--db", pg_url, "--image", IMAGE_NAME, "--tag", "multi",
        "--output", output,
    )
    assert code == 0, summary
    assert summary["requested_digest"] == digest
    assert summary["manifest_digest"] == real_image_multi.manifests[host_platform()]
    assert_valid_layout(output)
    packages = syft_packages(summary["target"])
    assert len(packages) == real_image_multi.package_count


def test_emulator_rejects_non_postgres_url(tmp_path):
    result = run_emulator("init", tmp_path / "store", "--db", "mysql://x@y/z")
    assert result.returncode == 2
    assert "mysql://x@y/z" in result.stderr
    assert "postgresql://" in result.stderr
    assert not (tmp_path / "store").exists()


def test_multi_default_is_host(pg_store, pg_url, real_image_multi, tmp_path):
    digest = push_image(pg_store, real_image_multi, "multi")

    with PostgresMetadata(pg_url) as source:
        result = build_layout(
            source, tmp_path / "layout", image=IMAGE_NAME, tag="multi"
        )

    host = host_platform()
    assert result.requested_digest == digest
    assert result.manifest_digest == real_image_multi.manifests[host]
    assert matches(parse_platform(host), result.platform)
    packages = syft_packages(result.target)
    assert len(packages) == real_image_multi.package_count


@pytest.mark.parametrize("requested", ["linux/arm64/v8", "linux/amd64"])
def test_multi_explicit_platform(
    pg_store, pg_url, real_image_multi, tmp_path, requested
):
    digest = push_image(pg_store, real_image_multi, "multi")
    output = tmp_path / "layout"

    with PostgresMetadata(pg_url) as source:
        result = build_layout(source, output, digest=digest, platform=requested)

    assert result.manifest_digest == real_image_multi.manifests[requested]
    assert result.manifest_digest not in real_image_multi.attestations.values()
    inspect = subprocess.run(
        [tool("skopeo"), "inspect", "--raw", f"oci:{output}:latest"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["mediaType"].endswith("manifest.v1+json")
    assert_valid_layout(output)


def test_docker_v2_kept_as_pushed(
    pg_store, pg_url, docker_archive_single, real_image_single, tmp_path
):
    digest = emulator_postgres.push(
        pg_store, REPOSITORY_KEY, IMAGE_NAME, "docker", docker_archive_single
    )
    output = tmp_path / "layout"

    with PostgresMetadata(pg_url) as source:
        result = build_layout(source, output, image=IMAGE_NAME, tag="docker")

    entry = read_index(output)["manifests"][0]
    assert entry["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert entry["digest"] == digest
    packages = syft_packages(result.target)
    assert len(packages) == real_image_single.package_count


# The emulator's PostgreSQL schema and push


@pytest.mark.parametrize(
    ("table", "column", "expected"),
    [
        ("repositories", "id", "uuid"),
        ("repositories", "created_at", "timestamp with time zone"),
        ("oci_blobs", "repository_id", "uuid"),
        ("oci_blobs", "size_bytes", "bigint"),
        ("oci_blobs", "pending_delete_at", "timestamp with time zone"),
        ("artifacts", "is_deleted", "boolean"),
        ("oci_manifest_subjects", "annotations", "jsonb"),
    ],
)
def test_schema_column_types(pg_store, pg_url, table, column, expected):
    with emulator_postgres.connect(pg_url) as connection:
        row = connection.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = %s",
            (table, column),
        ).fetchone()

    assert row == (expected,)


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("oci_blobs", "(repository_id, digest)"),
        ("oci_tags", "(repository_id, name, tag)"),
        ("manifest_blob_refs", "(repository_id, manifest_digest, blob_digest, kind)"),
        ("artifacts", "(repository_id, path)"),
        ("oci_manifest_subjects", "(repository_id, manifest_digest)"),
    ],
)
def test_schema_unique_constraints(pg_store, pg_url, table, columns):
    with emulator_postgres.connect(pg_url) as connection:
        definitions = [
            row[0]
            for row in connection.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)
            )
        ]

    assert any(
        d.startswith("CREATE UNIQUE INDEX") and d.endswith(f"USING btree {columns}")
        for d in definitions
    ), definitions


def test_create_schema_idempotent(pg_store, pg_url, real_image_single):
    digest = push_image(pg_store, real_image_single, "single")

    emulator_postgres.create_schema(pg_url)

    with PostgresMetadata(pg_url) as source:
        row = source.tag(source.repository(REPOSITORY_KEY), IMAGE_NAME, "single")
    assert row.manifest_digest == digest


def test_push_twice_changes_nothing(pg_store, pg_url, real_image_multi):
    push_image(pg_store, real_image_multi, "multi")
    snapshot = table_snapshot(pg_url)

    push_image(pg_store, real_image_multi, "multi")

    assert table_snapshot(pg_url) == snapshot


def test_repush_clears_pending_delete(pg_store, pg_url, real_image_single):
    push_image(pg_store, real_image_single, "single")
    with emulator_postgres.connect(pg_url) as connection:
        connection.execute("UPDATE oci_blobs SET pending_delete_at = now()")

    push_image(pg_store, real_image_single, "single")

    with emulator_postgres.connect(pg_url) as connection:
        (marked,) = connection.execute(
            "SELECT count(*) FROM oci_blobs WHERE pending_delete_at IS NOT NULL"
        ).fetchone()
    assert marked == 0


def test_duplicate_tag_rows_rejected(pg_store, pg_url, real_image_single):
    push_image(pg_store, real_image_single, "single")
    with emulator_postgres.connect(pg_url) as connection:
        connection.execute(
            "ALTER TABLE oci_tags DROP CONSTRAINT oci_tags_repository_name_tag_key"
        )
        connection.execute(
            "INSERT INTO oci_tags (repository_id, name, tag, manifest_digest,"
            " manifest_content_type) SELECT repository_id, name, tag, %s,"
            " manifest_content_type FROM oci_tags WHERE tag = 'single'",
            ("sha256:" + "4" * 64,),
        )

    with PostgresMetadata(pg_url) as source:
        repo = source.repository(REPOSITORY_KEY)
        with pytest.raises(IntegrityError, match="several oci_tags rows") as caught:
            source.tag(repo, IMAGE_NAME, "single")

    assert "sha256:" + "4" * 64 in str(caught.value)


def test_duplicate_blob_rows_rejected(pg_store, pg_url, real_image_single, tmp_path):
    digest = push_image(pg_store, real_image_single, "single")
    with emulator_postgres.connect(pg_url) as connection:
        connection.execute(
            "ALTER TABLE oci_blobs DROP CONSTRAINT oci_blobs_repository_digest_key"
        )
        connection.execute(
            "INSERT INTO oci_blobs (repository_id, digest, size_bytes, storage_key)"
            " SELECT repository_id, digest, size_bytes, storage_key FROM oci_blobs"
        )

    with (
        PostgresMetadata(pg_url) as source,
        pytest.raises(IntegrityError, match="duplicate oci_blobs rows"),
    ):
        build_layout(source, tmp_path / "out", digest=digest)

    assert not (tmp_path / "out").exists()


def table_snapshot(url: str) -> dict[str, list[tuple]]:
    snapshot = {}
    with emulator_postgres.connect(url) as connection:
        for table in emulator_postgres.TABLES:
            rows = connection.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            snapshot[table] = rows
    return snapshot


# Connections


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://reader:s3cret-pw@db.example/registry",
        "postgresql://reader@db.example/registry?password=s3cret-pw",
        "postgres://reader:s3cret-pw@db.example:5433/registry",
    ],
)
def test_url_with_password_rejected(url):
    with pytest.raises(UsageError) as caught:
        PostgresMetadata(url)

    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "PGPASSWORD" in message
    assert ".pgpass" in message


def test_password_from_environment(
    postgres_server, postgres_database, pg_store, monkeypatch, tmp_path
):
    database = postgres_database
    grant_reader(postgres_server, pg_store.url)
    url = postgres_server.url(database, user=postgres_server.password_user, tcp=True)
    without_password_sources(monkeypatch, tmp_path)
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)

    with PostgresMetadata(url) as source:
        repository = source.repository("no-such-repository")

    assert repository is None


def test_password_from_pgpass_file(
    postgres_server, postgres_database, pg_store, monkeypatch, tmp_path
):
    database = postgres_database
    grant_reader(postgres_server, pg_store.url)
    url = postgres_server.url(database, user=postgres_server.password_user, tcp=True)
    without_password_sources(monkeypatch, tmp_path)
    passfile = tmp_path / "pgpass"
    passfile.write_text(
        f"127.0.0.1:{postgres_server.port}:{database}:"
        f"{postgres_server.password_user}:{postgres_server.password}\n"
    )
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))

    with PostgresMetadata(url) as source:
        repository = source.repository("no-such-repository")

    assert repository is None


def test_missing_password_is_unavailable(
    postgres_server, postgres_database, pg_store, monkeypatch, tmp_path
):
    database = postgres_database
    url = postgres_server.url(database, user=postgres_server.password_user, tcp=True)
    without_password_sources(monkeypatch, tmp_path)

    with pytest.raises(MetadataMissingError) as caught:
        PostgresMetadata(url)

    assert caught.value.reason == "database-unavailable"
    assert "password" in str(caught.value)


def test_session_read_only_repeatable_read(pg_store, pg_url):
    with PostgresMetadata(pg_url) as source:
        read_only = source._rows("SHOW transaction_read_only")
        isolation = source._rows("SHOW transaction_isolation")
        with pytest.raises(MetadataMissingError, match="read-only transaction"):
            source._rows("CREATE TABLE intruder (id int)")

    assert read_only == [("on",)]
    assert isolation == [("repeatable read",)]


def test_snapshot_ignores_concurrent_retag(
    pg_store, pg_url, real_image_single, real_image_multi
):
    first = push_image(pg_store, real_image_single, "moving")

    with PostgresMetadata(pg_url) as source:
        repo = source.repository(REPOSITORY_KEY)
        before = source.tag(repo, IMAGE_NAME, "moving")
        second = push_image(pg_store, real_image_multi, "moving")
        during = source.tag(repo, IMAGE_NAME, "moving")

    with PostgresMetadata(pg_url) as source:
        after = source.tag(source.repository(REPOSITORY_KEY), IMAGE_NAME, "moving")

    assert before.manifest_digest == first
    assert during.manifest_digest == first
    assert after.manifest_digest == second


def test_statement_timeout_applies(pg_store, pg_url):
    with PostgresMetadata(pg_url, statement_timeout=0.2) as source:
        setting = source._rows("SHOW statement_timeout")
        with pytest.raises(MetadataMissingError, match="statement timeout"):
            source._rows("SELECT pg_sleep(5)")

    assert setting == [("200ms",)]


def test_url_options_kept(pg_store, pg_url):
    url = f"{pg_url}&options=-c%20search_path%3Dpublic"

    with PostgresMetadata(url) as source:
        search_path = source._rows("SHOW search_path")
        read_only = source._rows("SHOW default_transaction_read_only")

    assert search_path == [("public",)]
    assert read_only == [("on",)]


def test_application_name_from_url_kept(pg_store, pg_url):
    with PostgresMetadata(pg_url) as source:
        default = source._rows("SHOW application_name")
    with PostgresMetadata(f"{pg_url}&application_name=nightly-scan") as source:
        given = source._rows("SHOW application_name")

    assert default == [("ocilayout",)]
    assert given == [("nightly-scan",)]


@pytest.mark.parametrize("where", ["argument", "url", "environment"])
def test_silent_server_times_out(where, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        url = f"postgresql://nobody@127.0.0.1:{port}/x"
        options = {}
        if where == "argument":
            options["connect_timeout"] = 2
        elif where == "url":
            url += "?connect_timeout=2"
        else:
            monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")

        with pytest.raises(MetadataMissingError) as caught:
            PostgresMetadata(url, **options)

    assert caught.value.reason == "database-unavailable"
    assert "timeout" in str(caught.value)


def test_refused_connection_unavailable():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(MetadataMissingError) as caught:
        PostgresMetadata(f"postgresql://nobody@127.0.0.1:{port}/x")

    assert caught.value.reason == "database-unavailable"
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_database_without_tables_unavailable(pg_url):
    with pytest.raises(MetadataMissingError) as caught:
        PostgresMetadata(pg_url)

    assert caught.value.reason == "database-unavailable"
    assert "oci_blobs" in str(caught.value)


def test_import_does_not_load_psycopg():
    code = (
        "import sys, ocilayout, ocilayout.postgres, ocilayout.sources, "
        "ocilayout.registry_tree, ocilayout.layout_source; "
        "print('psycopg' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# Query plans with a million blob rows


class RecordingSource(PostgresMetadata):
    """A PostgresMetadata that keeps every statement it sends."""

    def __init__(self, url: str):
        self.statements: list[tuple[str, tuple]] = []
        super().__init__(url)

    def _rows(self, sql: str, *params: object) -> list[tuple]:
        self.statements.append((sql, params))
        return super()._rows(sql, *params)


@pytest.fixture(scope="module")
def big_database(postgres_server, real_image_multi, tmp_path_factory):
    """A database with the multi-platform image among a million blob rows."""
    url = postgres_server.url(postgres_server.create_database("big"))
    root = tmp_path_factory.mktemp("big-store")
    store = emulator_postgres.PostgresStore.init(root, url)
    digest = push_image(store, real_image_multi, "multi")
    emulator_postgres.add_synthetic_rows(url, SYNTHETIC_BLOB_ROWS)
    return url, digest


def test_big_database_has_million_blobs(big_database):
    url, _ = big_database
    with emulator_postgres.connect(url) as connection:
        (count,) = connection.execute("SELECT count(*) FROM oci_blobs").fetchone()

    assert count > SYNTHETIC_BLOB_ROWS


def test_every_query_uses_indexes(big_database, real_image_multi, tmp_path):
    url, digest = big_database
    statements = record_build_statements(url, digest, real_image_multi, tmp_path)
    distinct = {sql: params for sql, params in statements}
    assert len(distinct) >= 11, sorted(distinct)

    with emulator_postgres.connect(url, autocommit=True) as connection:
        for sql, params in distinct.items():
            for mode in ("force_custom_plan", "force_generic_plan"):
                nodes = plan_nodes(connection, sql, params, mode)
                scans = {
                    (node["Relation Name"], node["Node Type"])
                    for node in nodes
                    if node.get("Relation Name") in BIG_TABLES
                }
                assert {kind for _, kind in scans} <= INDEX_NODE_TYPES, (mode, sql)


def record_build_statements(url, digest, image, tmp_path) -> list[tuple[str, tuple]]:
    """Build by tag and by digest, and call every lookup; return the statements."""
    source = RecordingSource(url)
    try:
        result = build_layout(
            source,
            tmp_path / "by-tag",
            image=IMAGE_NAME,
            tag="multi",
            shape="full",
            referrers=True,
        )
        assert result.requested_digest == digest
        build_layout(source, tmp_path / "by-digest", digest=digest)
        repo = source.repository(REPOSITORY_KEY)
        config = json.loads(
            (
                image.layout
                / "blobs"
                / "sha256"
                / image.manifests[host_platform()].split(":")[1]
            ).read_bytes()
        )["config"]["digest"]
        assert source.blob(repo, config) is not None
        assert source.blob_digests_at(repo, f"oci-blobs/{config}") == [config]
        assert source.children(repo, digest)
        assert source.referrers(repo, digest) == []
    finally:
        source.close()
    return source.statements


def plan_nodes(connection, sql: str, params: tuple, mode: str) -> list[dict]:
    """EXPLAIN ``sql`` as a prepared statement under ``plan_cache_mode``."""
    # The source writes "?" placeholders and turns them into %s when it runs.
    numbered = sql.replace("?", "%s")
    for number in range(1, len(params) + 1):
        numbered = numbered.replace("%s", f"${number}", 1)
    connection.execute(f"SET plan_cache_mode = {mode}")
    connection.execute(f"PREPARE probe AS {numbered}")
    try:
        cursor = psycopg.ClientCursor(connection)
        placeholders = ", ".join(["%s"] * len(params))
        execute = f"EXECUTE probe({placeholders})" if params else "EXECUTE probe"
        cursor.execute(f"EXPLAIN (FORMAT JSON) {execute}", params)
        (plan,) = cursor.fetchone()
    finally:
        connection.execute("DEALLOCATE probe")
    return list(walk_plan(plan[0]["Plan"]))


def walk_plan(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from walk_plan(child)
