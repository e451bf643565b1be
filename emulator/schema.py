"""SQLite schema of the emulated store, mirroring the artifact manager's tables.

Column names match the production PostgreSQL schema. Types are SQLite
affinities: uuids are TEXT, timestamps are ISO 8601 TEXT in UTC, JSON is TEXT.
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL DEFAULT 'docker',
    storage_backend TEXT NOT NULL DEFAULT 'filesystem',
    storage_path TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    size_bytes INTEGER NOT NULL,
    checksum_sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (repository_id, path)
);
CREATE INDEX IF NOT EXISTS artifacts_storage_key
    ON artifacts (repository_id, storage_key);

CREATE TABLE IF NOT EXISTS oci_tags (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    manifest_content_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (repository_id, name, tag)
);
CREATE INDEX IF NOT EXISTS oci_tags_digest
    ON oci_tags (repository_id, manifest_digest);

CREATE TABLE IF NOT EXISTS oci_blobs (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    digest TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    storage_key TEXT NOT NULL,
    pending_delete_at TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX IF NOT EXISTS oci_blobs_storage_key
    ON oci_blobs (repository_id, storage_key);

CREATE TABLE IF NOT EXISTS manifest_blob_refs (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    manifest_digest TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('config', 'layer')),
    created_at TEXT NOT NULL,
    UNIQUE (repository_id, manifest_digest, blob_digest, kind)
);
CREATE INDEX IF NOT EXISTS manifest_blob_refs_manifest
    ON manifest_blob_refs (repository_id, manifest_digest);

CREATE TABLE IF NOT EXISTS oci_manifest_refs (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    parent_digest TEXT NOT NULL,
    child_digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (repository_id, parent_digest, child_digest)
);
CREATE INDEX IF NOT EXISTS oci_manifest_refs_child
    ON oci_manifest_refs (repository_id, child_digest);

CREATE TABLE IF NOT EXISTS oci_manifest_subjects (
    id TEXT PRIMARY KEY,
    repository_id TEXT NOT NULL REFERENCES repositories(id),
    manifest_digest TEXT NOT NULL,
    subject_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    size_bytes INTEGER NOT NULL,
    annotations TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (repository_id, manifest_digest)
);
CREATE INDEX IF NOT EXISTS oci_manifest_subjects_subject
    ON oci_manifest_subjects (repository_id, subject_digest);
"""

# File name of the SQLite database inside an emulator store directory.
DATABASE_NAME = "metadata.sqlite3"
# Folder under the store directory that holds each repository's storage_path.
STORAGE_DIRECTORY = "storage"
