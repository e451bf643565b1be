"""MetadataSource over the artifact manager's PostgreSQL database.

The source connects with psycopg 3, imported only when a source is opened,
so ``import ocilayout`` works without it. Connection rules:

- ``url`` is a libpq URL such as ``postgresql://reader@db.example/registry``.
  A URL that contains a password is rejected, because every local user can
  read a command line. libpq reads the password from ``PGPASSWORD`` or from
  a ``.pgpass`` file (``PGPASSFILE`` names another).
- Connecting gives up after ``connect_timeout`` seconds: the argument when
  given, else the URL's ``connect_timeout`` or ``PGCONNECT_TIMEOUT``, else
  DEFAULT_CONNECT_TIMEOUT. Every statement gives up after
  ``statement_timeout`` seconds.
- All queries run in one read-only REPEATABLE READ transaction, so a build
  sees one consistent snapshot even while pushes and garbage collection go
  on, and the session cannot write (``default_transaction_read_only`` is set
  as well). The transaction ends when the source is closed.
- Values travel as bound parameters, never inside the SQL text; psycopg
  binds them on the server.

Blob files are read from each repository's ``storage_path`` with the same
rules as the SQLite source (``ocilayout.store.open_blob``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Self
from urllib.parse import parse_qs, parse_qsl, urlsplit

from .errors import MetadataMissingError, UsageError
from .store import SQLMetadata

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql", "postgres")
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_STATEMENT_TIMEOUT = 60.0
# Every table the source reads.
TABLES = (
    "repositories",
    "artifacts",
    "oci_tags",
    "oci_blobs",
    "manifest_blob_refs",
    "oci_manifest_refs",
    "oci_manifest_subjects",
)
PASSWORD_HINT = (
    "remove the password from the URL and set PGPASSWORD, or add a line to "
    "~/.pgpass (or the file PGPASSFILE names)"
)


def check_url(url: str) -> None:
    """Reject a URL that is not a PostgreSQL URL or that contains a password."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UsageError(
            f"invalid PostgreSQL URL: {exc}; expected "
            "postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None
    if parts.scheme not in URL_SCHEMES:
        raise UsageError(
            f"invalid PostgreSQL URL {redact_url(url)!r}: expected "
            "postgresql://USER@HOST[:PORT]/DATABASE"
        )
    in_query = any(k.lower() == "password" for k in parse_qs(parts.query))
    if parts.password is not None or in_query:
        raise UsageError(
            f"the PostgreSQL URL {redact_url(url)!r} contains a password, which "
            f"every local user can read on a command line; {PASSWORD_HINT}"
        )


class PostgresMetadata(SQLMetadata):
    """MetadataSource over a PostgreSQL database, in one read-only transaction.

    Raises UsageError for a malformed URL or one with a password, and
    MetadataMissingError (reason ``database-unavailable``) when the server
    cannot be reached, rejects the login or lacks the store's tables.
    Use it as a context manager, or call ``close``.
    """

    _NOT_DELETED = "NOT {}is_deleted"
    _AS_TEXT = "::text"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: int | None = None,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ):
        check_url(url)
        psycopg = _import_psycopg()
        self._psycopg = psycopg
        self.url = url
        given = _parse_conninfo(url, psycopg)
        settings = _connection_settings(given, connect_timeout)
        settings["options"] = _session_options(given, statement_timeout)
        try:
            self._db = psycopg.connect(url, autocommit=False, **settings)
        except psycopg.Error as exc:
            raise self._unavailable("cannot connect to", exc) from exc
        self._db.read_only = True
        self._db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._check_tables()
        log.debug("reading metadata from PostgreSQL database %s", redact_url(url))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_tables(self) -> None:
        # WHERE false reads no row, yet the server still checks that every
        # table exists and may be read, so a missing grant shows up now.
        try:
            self._rows(f"SELECT 1 FROM {', '.join(TABLES)} WHERE false")
        except MetadataMissingError:
            self.close()
            raise

    def _unavailable(self, action: str, exc: Exception) -> MetadataMissingError:
        detail = str(exc).strip() or type(exc).__name__
        return MetadataMissingError(
            f"{action} PostgreSQL database {redact_url(self.url)}: {detail}",
            reason="database-unavailable",
        )

    def _rows(self, sql: str, *params: object) -> list[tuple]:
        # The shared statements use "?" placeholders, which psycopg spells %s.
        try:
            return self._db.execute(sql.replace("?", "%s"), params).fetchall()
        except self._psycopg.Error as exc:
            raise self._unavailable("query failed on", exc) from exc

    def close(self) -> None:
        """End the read-only transaction and the connection (idempotent)."""
        self._db.close()


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise UsageError(
            "reading a PostgreSQL database needs psycopg 3: install it with "
            "pip install 'ocilayout[postgresql]' or pip install 'psycopg[binary]'"
        ) from exc
    return psycopg


def _parse_conninfo(url: str, psycopg: Any) -> dict[str, Any]:
    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise UsageError(f"invalid PostgreSQL URL {redact_url(url)!r}: {exc}") from None


def _connection_settings(
    given: dict[str, Any], connect_timeout: int | None
) -> dict[str, Any]:
    """Return the libpq settings to add to those the URL and environment set."""
    settings: dict[str, Any] = {}
    if "application_name" not in given:
        settings["application_name"] = "ocilayout"
    if connect_timeout is not None:
        settings["connect_timeout"] = connect_timeout
    elif "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        settings["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    return settings


def _session_options(given: dict[str, Any], statement_timeout: float) -> str:
    """Return libpq ``options`` that keep any the URL sets and add ours."""
    milliseconds = max(1, int(statement_timeout * 1000))
    ours = f"-c default_transaction_read_only=on -c statement_timeout={milliseconds}"
    return f"{given.get('options') or ''} {ours}".strip()


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()
