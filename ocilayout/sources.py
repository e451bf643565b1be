"""Open a MetadataSource from the command line's source options.

Exactly one of these names where images come from:

- ``db``: a database URL. ``postgresql://USER@HOST[:PORT]/DATABASE`` (or
  ``postgres://``) opens the artifact manager's PostgreSQL database.
  ``sqlite:///abs/path`` and ``sqlite:relative/path`` open an emulator's
  SQLite database file. They are read as file URIs, so three slashes mean
  an absolute path.
- ``store``: an emulator store directory holding ``metadata.sqlite3``.
- ``registry_root``: a distribution registry's storage ``rootdirectory``.
- ``layout``: a local OCI image layout directory.

Each backend module is imported only when chosen, so psycopg is needed only
for PostgreSQL.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from .errors import UsageError
from .store import MetadataSource

SOURCE_OPTIONS = ("--db", "--store", "--registry-root", "--layout")


def open_source(
    db: str | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    registry_root: str | os.PathLike[str] | None = None,
    layout: str | os.PathLike[str] | None = None,
) -> MetadataSource:
    """Open the one source given; the caller closes it.

    Raises UsageError when none or several are given or the URL scheme is
    unknown; each backend raises its own errors for an unreadable source.
    """
    given = [v is not None for v in (db, store, registry_root, layout)]
    if sum(given) != 1:
        raise UsageError(
            f"give exactly one of {', '.join(SOURCE_OPTIONS)} to say where the "
            "images are stored"
        )
    if db is not None:
        return open_database(db)
    if store is not None:
        from .store import SQLiteMetadata

        return SQLiteMetadata.for_store(store)
    if registry_root is not None:
        from .registry_tree import RegistryTreeMetadata

        return RegistryTreeMetadata(registry_root)
    from .layout_source import OCILayoutMetadata

    return OCILayoutMetadata(layout)


def open_database(url: str) -> MetadataSource:
    """Open a ``postgresql://``, ``postgres://`` or ``sqlite:`` database URL."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresMetadata

        return PostgresMetadata(url)
    if scheme == "sqlite":
        from .store import SQLiteMetadata

        return SQLiteMetadata(sqlite_path(url))
    raise UsageError(
        f"unsupported database URL {_scheme_only(url)!r}: use "
        "postgresql://USER@HOST/DATABASE or sqlite:///PATH"
    )


def sqlite_path(url: str) -> str:
    """Return the file path of a ``sqlite:`` URL.

    ``sqlite:///srv/meta.sqlite3`` is ``/srv/meta.sqlite3``, and
    ``sqlite:meta.sqlite3`` is relative to the working directory. A host
    part, a query or a fragment is rejected rather than ignored.
    """
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment or not parts.path:
        raise UsageError(
            f"invalid SQLite URL {url!r}: expected sqlite:///ABSOLUTE/PATH or "
            "sqlite:RELATIVE/PATH"
        )
    path = unquote(parts.path)
    # SQLAlchemy spells an absolute path with four slashes; accept that too.
    return "/" + path.lstrip("/") if path.startswith("/") else path


def _scheme_only(url: str) -> str:
    # The rest of an unknown URL may hold a password, so only the scheme is
    # repeated in messages.
    scheme = urlsplit(url).scheme
    return f"{scheme}://..." if scheme else "(no scheme)"
