"""The emulated store with its metadata in PostgreSQL instead of SQLite.

``create_schema`` creates the artifact manager's tables with the PostgreSQL
types a production database has: uuid keys, timestamptz times, a jsonb
annotations column, boolean ``is_deleted`` and bigint sizes, plus the keys,
unique constraints, foreign keys and indexes its lookups rely on. ``PostgresStore`` keeps blobs on the filesystem
exactly as ``EmulatorStore`` does (``<root>/storage/<repository key>/`` is each
repository's ``storage_path``) and writes rows into PostgreSQL.

``push`` reuses the emulator's push logic for content: blobs and manifest
bodies are verified and written through temporary files first. Only the row
writing differs, because the SQLite statements compare ``is_deleted`` with
integers and use ``?`` placeholders. All rows of one push commit in one
transaction.

psycopg 3 is imported when a store is opened, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ocilayout.errors import NotFoundError, UsageError

from . import push as push_module
from .push import RowWriter, _Plan
from .schema import STORAGE_DIRECTORY
from .sources import ImageSource
from .store import Repository, _check_repository_key, storage_relative_path

logger = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024

# Columns of every table. Keys, unique constraints, foreign keys and indexes
# are added by ensure_constraints, so a bulk load can drop and rebuild them.
TABLES_SQL = """
CREATE TABLE IF NOT EXISTS repositories (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    key text NOT NULL,
    format text NOT NULL DEFAULT 'docker',
    storage_backend text NOT NULL DEFAULT 'filesystem',
    storage_path text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS artifacts (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    path text NOT NULL,
    name text NOT NULL,
    version text,
    size_bytes bigint NOT NULL,
    checksum_sha256 text NOT NULL,
    content_type text NOT NULL,
    storage_key text NOT NULL,
    is_deleted boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS oci_tags (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    name text NOT NULL,
    tag text NOT NULL,
    manifest_digest text NOT NULL,
    manifest_content_type text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS oci_blobs (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    digest text NOT NULL,
    size_bytes bigint NOT NULL,
    storage_key text NOT NULL,
    pending_delete_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS manifest_blob_refs (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    manifest_digest text NOT NULL,
    blob_digest text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('config', 'layer')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS oci_manifest_refs (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    parent_digest text NOT NULL,
    child_digest text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS oci_manifest_subjects (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    repository_id uuid NOT NULL,
    manifest_digest text NOT NULL,
    subject_digest text NOT NULL,
    media_type text NOT NULL,
    artifact_type text,
    size_bytes bigint NOT NULL,
    annotations jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# The tables, largest first in a production database.
TABLES = (
    "oci_blobs",
    "manifest_blob_refs",
    "artifacts",
    "oci_tags",
    "oci_manifest_refs",
    "oci_manifest_subjects",
    "repositories",
)

_CHILD_TABLES = TABLES[:-1]
_REPOSITORY_FOREIGN_KEY = (
    "FOREIGN KEY (repository_id) REFERENCES repositories (id) ON DELETE CASCADE"
)

# (table, constraint name, definition): keys before the foreign keys that
# need them.
CONSTRAINTS = (
    ("repositories", "repositories_pkey", "PRIMARY KEY (id)"),
    ("repositories", "repositories_key_key", "UNIQUE (key)"),
    *((table, f"{table}_pkey", "PRIMARY KEY (id)") for table in _CHILD_TABLES),
    ("artifacts", "artifacts_repository_path_key", "UNIQUE (repository_id, path)"),
    (
        "oci_tags",
        "oci_tags_repository_name_tag_key",
        "UNIQUE (repository_id, name, tag)",
    ),
    ("oci_blobs", "oci_blobs_repository_digest_key", "UNIQUE (repository_id, digest)"),
    (
        "manifest_blob_refs",
        "manifest_blob_refs_row_key",
        "UNIQUE (repository_id, manifest_digest, blob_digest, kind)",
    ),
    (
        "oci_manifest_refs",
        "oci_manifest_refs_edge_key",
        "UNIQUE (repository_id, parent_digest, child_digest)",
    ),
    (
        "oci_manifest_subjects",
        "oci_manifest_subjects_manifest_key",
        "UNIQUE (repository_id, manifest_digest)",
    ),
    *(
        (table, f"{table}_repository_id_fkey", _REPOSITORY_FOREIGN_KEY)
        for table in _CHILD_TABLES
    ),
)

# (index name, definition) of the indexes beyond the unique constraints.
INDEXES = (
    # Lookups by storage key alone and within one repository.
    ("artifacts_storage_key", "artifacts (storage_key, repository_id)"),
    ("oci_tags_name_tag", "oci_tags (name, tag)"),
    ("oci_tags_digest", "oci_tags (repository_id, manifest_digest)"),
    # A blob row is also looked up by the storage key its file has.
    ("oci_blobs_storage_key", "oci_blobs (repository_id, storage_key)"),
    # Garbage collection scans the rows marked for deletion and looks up
    # which manifests still reference a blob.
    (
        "oci_blobs_pending_delete",
        "oci_blobs (pending_delete_at) WHERE pending_delete_at IS NOT NULL",
    ),
    ("manifest_blob_refs_blob", "manifest_blob_refs (repository_id, blob_digest)"),
    ("oci_manifest_refs_child", "oci_manifest_refs (repository_id, child_digest)"),
    (
        "oci_manifest_subjects_subject",
        "oci_manifest_subjects (repository_id, subject_digest)",
    ),
)


def connect(url: str, **options: Any):
    """Open a psycopg connection to ``url`` with autocommit off.

    The connection timeout is 10 seconds unless the URL or PGCONNECT_TIMEOUT
    sets one.
    """
    import psycopg

    url_settings = psycopg.conninfo.conninfo_to_dict(url)
    if "connect_timeout" not in url_settings and "PGCONNECT_TIMEOUT" not in os.environ:
        options.setdefault("connect_timeout", 10)
    return psycopg.connect(url, **options)


def create_schema(url: str) -> None:
    """Create the tables, constraints and indexes at ``url`` (idempotent)."""
    with connect(url) as connection:
        connection.execute(TABLES_SQL)
        ensure_constraints(connection)


def ensure_constraints(connection) -> None:
    """Add every constraint and index of the schema that is missing."""
    present = {
        row[0]
        for row in connection.execute(
            "SELECT conname FROM pg_constraint WHERE connamespace = "
            "current_schema()::regnamespace"
        )
    }
    for table, name, definition in CONSTRAINTS:
        if name not in present:
            connection.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
            )
    for name, definition in INDEXES:
        connection.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def _drop_child_constraints(connection) -> None:
    """Drop the constraints and indexes of every table but ``repositories``."""
    for table, name, _ in reversed(CONSTRAINTS):
        if table != "repositories":
            connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    for name, _ in INDEXES:
        connection.execute(f"DROP INDEX IF EXISTS {name}")


class PostgresStore:
    """Blob storage under ``root`` with its metadata rows in PostgreSQL.

    ``url`` is a libpq connection URL; a password comes from ``PGPASSWORD``
    or a ``.pgpass`` file as for any libpq client. Opening a store creates
    nothing; use ``init`` for that.
    """

    def __init__(self, root: str | os.PathLike[str], url: str):
        self.root = Path(root).resolve()
        self.url = url
        if not self.storage_root.is_dir():
            raise NotFoundError(
                f"no emulator store at {self.root}: {STORAGE_DIRECTORY}/ is "
                f"missing; create one with 'python -m emulator init {self.root} "
                "--db URL'"
            )

    @classmethod
    def init(cls, root: str | os.PathLike[str], url: str) -> PostgresStore:
        """Create the schema and then the storage folder, or reuse those there.

        The schema comes first, so an unreachable database leaves no folder.
        """
        create_schema(url)
        (Path(root) / STORAGE_DIRECTORY).mkdir(parents=True, exist_ok=True)
        return cls(root, url)

    @property
    def storage_root(self) -> Path:
        return self.root / STORAGE_DIRECTORY

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield a connection whose statements commit together or not at all."""
        with connect(self.url) as connection, connection.transaction():
            yield connection

    # Repositories

    def ensure_repository(self, key: str) -> Repository:
        """Return the repository ``key``, creating its row and folder if absent."""
        _check_repository_key(key)
        storage_path = self.storage_root / key
        storage_path.mkdir(parents=True, exist_ok=True)
        with self.transaction() as connection:
            connection.execute(
                "INSERT INTO repositories (key, format, storage_backend, storage_path)"
                " VALUES (%s, 'docker', 'filesystem', %s)"
                " ON CONFLICT (key) DO NOTHING",
                (key, str(storage_path)),
            )
        return self.repository(key)

    def repository(self, key: str) -> Repository:
        """Return the repository ``key`` or raise NotFoundError."""
        with connect(self.url) as connection:
            row = connection.execute(
                "SELECT id::text, key, format, storage_backend, storage_path"
                " FROM repositories WHERE key = %s",
                (key,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"repository {key!r} not found in {self.url}")
        return Repository(row[0], row[1], row[2], row[3], Path(row[4]))

    # Objects

    def object_path(self, repository: Repository, key: str) -> Path:
        return repository.storage_path / storage_relative_path(key)

    def write_object(
        self, repository: Repository, key: str, source: BinaryIO | bytes
    ) -> Path:
        """Write an object atomically, leaving no file when ``source`` raises."""
        destination = self.object_path(repository, key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=destination.parent, prefix=".tmp-", suffix=".partial"
        )
        try:
            with os.fdopen(handle, "wb") as output:
                _copy_into(source, output)
            os.chmod(temporary, 0o644)
            os.replace(temporary, destination)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return destination


def push(
    store: PostgresStore,
    repo_key: str,
    image: str,
    tag: str | None,
    source: ImageSource | str | os.PathLike[str],
    *,
    allow_partial: bool = False,
) -> str:
    """Push the image in ``source`` as ``<image>:<tag>`` and return its digest.

    Behaves as ``emulator.push.push`` does, with the rows going to PostgreSQL.
    """
    return push_module.push(
        store,
        repo_key,
        image,
        tag,
        source,
        allow_partial=allow_partial,
        rows=POSTGRES_ROWS,
    )


def _insert_rows(connection, repository: Repository, image: str, plan: _Plan) -> None:
    repo_id = repository.id
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO oci_blobs (repository_id, digest, size_bytes, storage_key)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (repository_id, digest) DO UPDATE SET"
            " pending_delete_at = NULL, size_bytes = excluded.size_bytes,"
            " storage_key = excluded.storage_key"
            " WHERE oci_blobs.pending_delete_at IS NOT NULL"
            " OR oci_blobs.size_bytes <> excluded.size_bytes"
            " OR oci_blobs.storage_key <> excluded.storage_key",
            [
                (repo_id, digest, size, key)
                for digest, (size, key) in sorted(plan.blobs.items())
            ],
        )
        cursor.executemany(
            "INSERT INTO manifest_blob_refs (repository_id, manifest_digest,"
            " blob_digest, kind) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(repo_id, *row) for row in sorted(plan.blob_refs)],
        )
        cursor.executemany(
            "INSERT INTO oci_manifest_refs (repository_id, parent_digest,"
            " child_digest) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(repo_id, *row) for row in sorted(plan.manifest_refs)],
        )
        cursor.executemany(
            "INSERT INTO oci_manifest_subjects (repository_id, manifest_digest,"
            " subject_digest, media_type, artifact_type, size_bytes, annotations)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
            [(repo_id, digest, *row) for digest, row in sorted(plan.subjects.items())],
        )
    for digest in sorted(plan.manifests):
        _upsert_reference(connection, repository, image, digest, digest, plan)


def _upsert_reference(
    connection,
    repository: Repository,
    image: str,
    reference: str,
    digest: str,
    plan: _Plan,
) -> None:
    """Record ``<image>:<reference>`` -> ``digest`` in artifacts and oci_tags."""
    size, media_type, key, checksum = plan.manifests[digest]
    connection.execute(
        "INSERT INTO artifacts (repository_id, path, name, version, size_bytes,"
        " checksum_sha256, content_type, storage_key)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (repository_id, path) DO UPDATE SET"
        " size_bytes = excluded.size_bytes,"
        " checksum_sha256 = excluded.checksum_sha256,"
        " content_type = excluded.content_type, storage_key = excluded.storage_key,"
        " is_deleted = false, updated_at = now()"
        " WHERE artifacts.storage_key <> excluded.storage_key"
        " OR artifacts.content_type <> excluded.content_type"
        " OR artifacts.is_deleted",
        (
            repository.id,
            f"v2/{image}/manifests/{reference}",
            f"{image}:{reference}",
            reference,
            size,
            checksum,
            media_type,
            key,
        ),
    )
    connection.execute(
        "INSERT INTO oci_tags (repository_id, name, tag, manifest_digest,"
        " manifest_content_type) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (repository_id, name, tag) DO UPDATE SET"
        " manifest_digest = excluded.manifest_digest,"
        " manifest_content_type = excluded.manifest_content_type,"
        " updated_at = now()"
        " WHERE oci_tags.manifest_digest <> excluded.manifest_digest"
        " OR oci_tags.manifest_content_type <> excluded.manifest_content_type",
        (repository.id, image, reference, digest, media_type),
    )


def add_synthetic_rows(
    url: str, blobs: int, *, repositories: int = 20, blobs_per_manifest: int = 5
) -> None:
    """Fill the database with ``blobs`` unrelated blob rows and their metadata.

    This gives a test database the size of a production one. The schema
    must exist. Rows are spread over ``repositories`` new repositories.
    Every ``blobs_per_manifest`` blobs belong to one image manifest with a
    tag, an artifacts row and ``manifest_blob_refs`` rows, and every tenth
    manifest has a referrer row. Digests are sha256 hashes of a random
    prefix and row numbers, so they do not collide with real content.

    Rows are generated inside the server with ``generate_series`` while the
    constraints and indexes of the affected tables are dropped, which makes
    loading several times faster. They are rebuilt in the same transaction,
    and the tables are analyzed after it commits.
    """
    if blobs < 1 or repositories < 1 or blobs_per_manifest < 1:
        raise UsageError("blobs, repositories and blobs_per_manifest must be >= 1")
    manifests = max(1, blobs // blobs_per_manifest)
    with connect(url) as connection:
        prefix = uuid.uuid4().hex[:8]
        connection.execute(_SYNTHETIC_REPOSITORIES, (prefix, repositories))
        _drop_child_constraints(connection)
        parameters = {
            "prefix": prefix,
            "blobs": blobs,
            "manifests": manifests,
            "repositories": repositories,
            "per_manifest": blobs_per_manifest,
        }
        for statement in _SYNTHETIC_ROWS:
            connection.execute(statement, parameters)
        ensure_constraints(connection)
        connection.commit()
        connection.autocommit = True
        for table in TABLES:
            connection.execute(f"ANALYZE {table}")


_SYNTHETIC_REPOSITORIES = """
INSERT INTO repositories (key, storage_path)
SELECT %s || '-synthetic-' || r, '/nonexistent/synthetic/' || r
FROM generate_series(1, %s) AS r
"""

# Each statement numbers the synthetic repositories 0..N-1 in key order and
# derives every digest from a row number, so the statements agree without
# passing rows between them.
_SYNTHETIC_ROWS = (
    """
    CREATE TEMPORARY TABLE synthetic_repositories AS
    SELECT id, row_number() OVER (ORDER BY key) - 1 AS n
    FROM repositories WHERE key LIKE %(prefix)s || '-synthetic-%%'
    """,
    """
    INSERT INTO oci_blobs (repository_id, digest, size_bytes, storage_key)
    SELECT r.id, d.digest, 1024 + i %% 4096, 'oci-blobs/' || d.digest
    FROM generate_series(0, %(blobs)s - 1) AS i
    CROSS JOIN LATERAL (SELECT 'sha256:' || encode(sha256(
        convert_to(%(prefix)s || 'blob' || i, 'UTF8')), 'hex') AS digest) AS d
    JOIN synthetic_repositories r
        ON r.n = (i / %(per_manifest)s) %% %(repositories)s
    """,
    """
    INSERT INTO manifest_blob_refs
        (repository_id, manifest_digest, blob_digest, kind)
    SELECT r.id, m.digest, b.digest,
           CASE WHEN i %% %(per_manifest)s = 0 THEN 'config' ELSE 'layer' END
    FROM generate_series(0, %(blobs)s - 1) AS i
    CROSS JOIN LATERAL (SELECT 'sha256:' || encode(sha256(convert_to(
        %(prefix)s || 'manifest' || (i / %(per_manifest)s), 'UTF8')), 'hex')
        AS digest) AS m
    CROSS JOIN LATERAL (SELECT 'sha256:' || encode(sha256(
        convert_to(%(prefix)s || 'blob' || i, 'UTF8')), 'hex') AS digest) AS b
    JOIN synthetic_repositories r
        ON r.n = (i / %(per_manifest)s) %% %(repositories)s
    """,
    """
    CREATE TEMPORARY TABLE synthetic_manifests AS
    SELECT j, r.id AS repository_id, 'sha256:' || encode(sha256(convert_to(
        %(prefix)s || 'manifest' || j, 'UTF8')), 'hex') AS digest
    FROM generate_series(0, %(manifests)s - 1) AS j
    JOIN synthetic_repositories r ON r.n = j %% %(repositories)s
    """,
    """
    INSERT INTO artifacts (repository_id, path, name, version, size_bytes,
        checksum_sha256, content_type, storage_key)
    SELECT repository_id, 'v2/synthetic/app' || j || '/manifests/' || digest,
           'synthetic/app' || j || ':' || digest, digest, 512,
           substr(digest, 8), 'application/vnd.oci.image.manifest.v1+json',
           'oci-manifests/' || digest
    FROM synthetic_manifests
    """,
    """
    INSERT INTO oci_tags (repository_id, name, tag, manifest_digest,
        manifest_content_type)
    SELECT repository_id, 'synthetic/app' || j, 'v' || j, digest,
           'application/vnd.oci.image.manifest.v1+json'
    FROM synthetic_manifests
    """,
    """
    INSERT INTO oci_manifest_subjects (repository_id, manifest_digest,
        subject_digest, media_type, artifact_type, size_bytes, annotations)
    SELECT repository_id, 'sha256:' || encode(sha256(convert_to(
        %(prefix)s || 'referrer' || j, 'UTF8')), 'hex'), digest,
        'application/vnd.oci.image.manifest.v1+json', 'application/spdx+json',
        600, jsonb_build_object('org.opencontainers.image.created',
        '1970-01-01T00:00:00Z')
    FROM synthetic_manifests WHERE j %% 10 = 0
    """,
    """
    INSERT INTO oci_manifest_refs (repository_id, parent_digest, child_digest)
    SELECT a.repository_id, 'sha256:' || encode(sha256(convert_to(
        %(prefix)s || 'index' || (a.j / 2), 'UTF8')), 'hex'), a.digest
    FROM synthetic_manifests a
    """,
)


def _copy_into(source: BinaryIO | bytes, output: BinaryIO) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        output.write(source)
        return
    while chunk := source.read(_COPY_CHUNK):
        output.write(chunk)


POSTGRES_ROWS = RowWriter(_insert_rows, _upsert_reference)
