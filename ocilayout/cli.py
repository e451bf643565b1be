"""Command line interface: parses options, calls the library, maps errors to exit codes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import (
    AmbiguousError,
    IntegrityError,
    MetadataMissingError,
    NotFoundError,
    OCILayoutError,
    OutputError,
    PlatformNotFoundError,
    UsageError,
)

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Build verified OCI image layouts from an artifact manager's store.",
)

# One hint per error class, shown under the message on a terminal and in JSON.
_HINTS: list[tuple[type, str]] = [
    (AmbiguousError, "pass --repo KEY to pick one repository"),
    (PlatformNotFoundError, "choose one of the offered platforms with --platform"),
    (NotFoundError, "check the digest, image, tag and --repo values"),
    (
        MetadataMissingError,
        "no local layout is possible; scan the image through its registry instead",
    ),
    (
        IntegrityError,
        "the store's content does not match its metadata; do not scan this image "
        "until the store is repaired",
    ),
    (OutputError, "choose an output path that does not exist, in an existing folder"),
]


# Where images are read from: exactly one of these options is given.
STORE_HELP = "Emulator store directory (contains metadata.sqlite3)."
DB_HELP = (
    "Metadata database: postgresql://USER@HOST[:PORT]/DATABASE (password from "
    "PGPASSWORD or ~/.pgpass, never in the URL) or sqlite:///PATH."
)
REGISTRY_ROOT_HELP = (
    "Storage root of a distribution registry (contains docker/registry/v2)."
)
LAYOUT_HELP = "A local OCI image layout to read images from."


def metadata_source(store, db, registry_root, layout):
    """Return what build_layout and scan_image take for the given source options.

    A plain ``--store`` is passed as a path; any other source is opened
    lazily by a factory, so that a database that cannot be reached surfaces
    inside the build as missing metadata (exit 4).
    """
    if store is not None and db is None and registry_root is None and layout is None:
        return store

    def open_given():
        from .sources import open_source

        return open_source(
            db=db, store=store, registry_root=registry_root, layout=layout
        )

    if not any(value is not None for value in (store, db, registry_root, layout)):
        raise UsageError(
            "give one of --store, --db, --registry-root or --layout to say "
            "where the images are stored"
        )
    return open_given


# Exit code of `check` for a layout with errors, the integrity failure code.
EXIT_INVALID_LAYOUT = 5


class Shape(str, Enum):
    scan = "scan"
    full = "full"


class Verify(str, Enum):
    digest = "digest"
    deep = "deep"


class Link(str, Enum):
    auto = "auto"
    hardlink = "hardlink"
    reflink = "reflink"
    copy = "copy"


def _hint_for(error: OCILayoutError) -> str | None:
    if getattr(error, "reason", None) == "database-unavailable":
        return (
            "check the database URL or path and that the server runs; if the "
            "metadata is really gone, `ocilayout scan --registry HOST` scans "
            "through the registry"
        )
    for kind, hint in _HINTS:
        if isinstance(error, kind):
            return hint
    return None


# Attributes of an error copied into the JSON failure document when set.
ERROR_FIELDS = ("reason", "digest", "manifest", "path", "candidates")


def error_document(
    error: OCILayoutError, hint: str | None, fields: tuple[str, ...] = ERROR_FIELDS
) -> dict:
    """Return the ``{"ok": false, "error": {...}}`` document printed by ``--json``."""
    document = {
        "type": type(error).__name__,
        "message": str(error),
        "exit_code": error.exit_code,
    }
    for name in fields:
        value = getattr(error, name, None)
        if value is not None:
            document[name] = value
    if hint:
        document["hint"] = hint
    return {"ok": False, "error": document}


def _fail(error: OCILayoutError, as_json: bool) -> None:
    hint = _hint_for(error)
    if as_json:
        typer.echo(json.dumps(error_document(error, hint), indent=2))
    else:
        typer.echo(f"error: {error}", err=True)
        if hint:
            typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(error.exit_code)


class Progress:
    """A one-line progress display on stderr, redrawn at most ten times a second.

    Build events update the bytes and blobs counts. Between ``scanner-start``
    and ``scanner-end`` a ticker thread shows how long ``scanner`` has run.
    """

    def __init__(self, scanner: str | None = None) -> None:
        self.total_bytes = 0
        self.total_blobs = 0
        self.bytes = 0
        self.blobs = 0
        self.scanner = scanner
        self._lock = threading.Lock()
        self._last = 0.0
        self._scanning = threading.Event()

    def __call__(self, event: str, value: int) -> None:
        if event == "scanner-start":
            self._start_ticker()
            return
        if event == "scanner-end":
            self._scanning.clear()
            return
        with self._lock:
            if event == "total-bytes":
                self.total_bytes = value
            elif event == "total-blobs":
                self.total_blobs = value
            elif event == "bytes":
                self.bytes += value
            elif event == "blob":
                self.blobs += value
            now = time.monotonic()
            if event == "blob" or (event == "bytes" and now - self._last >= 0.1):
                self._last = now
                self._draw()

    def _draw(self) -> None:
        mib = 1024 * 1024
        sys.stderr.write(
            f"\rverified {self.bytes / mib:,.1f}/{self.total_bytes / mib:,.1f} MiB, "
            f"placed {self.blobs}/{self.total_blobs} blobs"
        )
        sys.stderr.flush()

    def _start_ticker(self) -> None:
        self.finish()
        self._last = 0.0
        self._scanning.set()
        started = time.monotonic()

        def tick() -> None:
            while True:
                with self._lock:
                    # Checked under the lock, so no line follows finish's newline.
                    if not self._scanning.is_set():
                        return
                    elapsed = time.monotonic() - started
                    sys.stderr.write(f"\rscanning with {self.scanner}: {elapsed:.0f} s")
                    sys.stderr.flush()
                    self._last = time.monotonic()
                time.sleep(0.5)

        threading.Thread(target=tick, daemon=True).start()

    def finish(self) -> None:
        with self._lock:
            self._scanning.clear()
            if self._last:
                sys.stderr.write("\n")
                self._last = 0.0


def _install_signal_handlers() -> None:
    # SIGTERM becomes KeyboardInterrupt so that cleanup code runs as for Ctrl-C.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _platforms(values: list[str] | None, os_version: str | None):
    from .platforms import parse_platform

    if not values and os_version is None:
        return None
    if not values:
        raise UsageError("--os-version needs --platform, such as windows/amd64")
    return [parse_platform(value, os_version) for value in values]


NO_CACHE_HELP = "Hash every blob; neither read nor write the verification cache."
CACHE_DIR_HELP = (
    "Verification cache directory; default: $XDG_CACHE_HOME/ocilayout or "
    "~/.cache/ocilayout."
)


def open_cache(no_cache: bool, cache_dir: Path | None, link: Link = Link.auto):
    # Only a hardlink keeps the verified inode, so only it can use the cache.
    if no_cache or link not in (Link.auto, Link.hardlink):
        return None
    from .cache import VerifyCache, default_cache_dir

    return VerifyCache(cache_dir or default_cache_dir())


BUILD_EXIT_CODES = """\
0    the layout was built and verified
1    other error: output exists or is not writable, not a container image
2    invalid usage or a malformed value
3    manifest, tag, repository or platform not found, or several repositories match
4    the store lacks metadata a local layout needs (a caller may use the registry)
5    stored content is wrong: digest or size mismatch, unsafe path
130  interrupted (Ctrl-C or SIGTERM); nothing was written"""


# "\b" keeps click from rewrapping the table.
@app.command(epilog=f"\b\nExit codes:\n{BUILD_EXIT_CODES}")
def build(
    output: Path = typer.Option(..., "--output", "-o", help="Layout directory to create; it must not exist."),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    registry_root: Optional[Path] = typer.Option(None, "--registry-root", help=REGISTRY_ROOT_HELP),
    layout_dir: Optional[Path] = typer.Option(None, "--layout", help=LAYOUT_HELP),
    digest: Optional[str] = typer.Option(None, "--digest", help="Manifest or index digest, sha256:<hex>."),
    image: Optional[str] = typer.Option(None, "--image", help="Image name, used with --tag."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Tag (or digest reference) of --image."),
    repo: Optional[str] = typer.Option(None, "--repo", help="Repository key; optional when the image is in one repository only."),
    platform: Optional[list[str]] = typer.Option(None, "--platform", help="os/arch[/variant] to pick from an index; default: the host's. Repeat with --shape full."),
    os_version: Optional[str] = typer.Option(None, "--os-version", help="Windows os.version the chosen child must have, such as 10.0.17763 (a prefix in whole components matches)."),
    shape: Shape = typer.Option(Shape.scan, "--shape", help="scan: one image manifest in index.json; full: the stored index with every child."),
    referrers: bool = typer.Option(False, "--referrers", help="Also place signatures, SBOMs and attestations whose subject is a placed manifest."),
    ref: Optional[str] = typer.Option(None, "--ref", help="org.opencontainers.image.ref.name for the layout; default: the tag, or latest when built by --digest alone."),
    link: Link = typer.Option(Link.auto, "--link", help="Blob placement: auto tries hardlink, then reflink, then copy."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Blobs verified in parallel; default: CPU count."),
    no_sync: bool = typer.Option(False, "--no-sync", help="Skip fsync; for throwaway layouts."),
    verify: Verify = typer.Option(Verify.digest, "--verify", help="digest: check each blob's size and digest; deep: also decompress each layer and check its diff_id."),
    no_cache: bool = typer.Option(False, "--no-cache", help=NO_CACHE_HELP),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log resolution steps to stderr."),
) -> None:
    """Build a verified OCI image layout for one image of the store.

    Give exactly one of --store, --db, --registry-root or --layout, and name
    the image with --digest or with --image and --tag.
    """
    from .build import build_layout

    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    _install_signal_handlers()
    progress = Progress() if sys.stderr.isatty() and not as_json else None
    try:
        cache = open_cache(no_cache, cache_dir, link)
        result = build_layout(
            metadata_source(store, db, registry_root, layout_dir),
            output,
            digest=digest,
            image=image,
            tag=tag,
            repo=repo,
            platform=_platforms(platform, os_version),
            shape=shape.value,
            referrers=referrers,
            ref_name=ref,
            link=link.value,
            workers=workers,
            sync=not no_sync,
            progress=progress,
            verify=verify.value,
            cache=cache,
        )
    except OCILayoutError as error:
        if progress:
            progress.finish()
        _fail(error, as_json)
    except KeyboardInterrupt:
        if progress:
            progress.finish()
        typer.echo("interrupted; no layout was written", err=True)
        raise typer.Exit(130)
    if progress:
        progress.finish()
    if as_json:
        typer.echo(json.dumps({"ok": True, **result.to_json()}, indent=2))
        return
    methods = ", ".join(
        f"{count} {method}" for method, count in result.to_json()["placement_methods"].items()
    )
    typer.echo(f"built {result.output}")
    kind = "index" if result.shape == "full" else "manifest"
    typer.echo(f"  {kind:8} {result.manifest_digest} ({result.platform or 'no platform'})")
    typer.echo(f"  blobs    {len(result.placements)} placed ({methods})")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(result.target)


@app.command()
def check(
    layout: Path = typer.Argument(
        ..., metavar="LAYOUT", help="OCI image layout directory to validate."
    ),
    deep: bool = typer.Option(False, "--deep", help="Also decompress each layer and check its diff_id."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Validate a layout and list the consumers that can read it.

    Exits 0 when the layout has no errors (warnings allowed) and 5 when it has errors.
    """
    from .check import check_layout, format_report

    report = check_layout(layout, deep=deep)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(format_report(report))
    raise typer.Exit(0 if report.ok else EXIT_INVALID_LAYOUT)


@app.command()
def remove(
    layout: Path = typer.Argument(
        ..., metavar="LAYOUT", help="OCI image layout directory to delete."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Leave the verification cache unchanged."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP),
) -> None:
    """Delete a layout, keeping its verification cache entries.

    Unlinking a hardlinked blob changes the store file's ctime, which a plain
    `rm -r` turns into a cache miss on the next build. The directory must hold
    only what build writes (oci-layout, index.json, blobs/<algorithm>/<hex>);
    anything else makes remove exit 2 without deleting.
    """
    from .cache import remove_layout

    try:
        info = os.lstat(layout)
        if not stat.S_ISDIR(info.st_mode) or not (layout / "oci-layout").is_file():
            raise UsageError(
                f"{layout} is not an OCI image layout directory (no oci-layout "
                "file); remove only what ocilayout build wrote"
            )
        extra = _foreign_entries(layout)
        if extra:
            shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
            raise UsageError(
                f"{layout} contains entries that ocilayout build does not write "
                f"({shown}); nothing was removed, so delete it by hand if you "
                "mean to"
            )
        cache = open_cache(no_cache, cache_dir)
        try:
            remove_layout(layout, cache)
        finally:
            if cache is not None:
                cache.close()
    except FileNotFoundError:
        _fail(UsageError(f"layout {layout} does not exist"), False)
    except OCILayoutError as error:
        _fail(error, False)
    except OSError as exc:
        _fail(OutputError(f"cannot remove layout {layout}: {exc}"), False)
    if os.path.lexists(layout):
        _fail(OutputError(f"could not remove everything under {layout}"), False)
    typer.echo(f"removed {layout}")


_BLOB_NAME = re.compile(r"[a-f0-9]{32,128}")


def _foreign_entries(layout: Path) -> list[str]:
    """List what a layout contains beyond oci-layout, index.json and blob files."""
    extra = []
    for entry in os.scandir(layout):
        if entry.name in ("oci-layout", "index.json") and entry.is_file(
            follow_symlinks=False
        ):
            continue
        if entry.name != "blobs" or not entry.is_dir(follow_symlinks=False):
            extra.append(entry.name)
            continue
        for folder in os.scandir(entry.path):
            name = f"blobs/{folder.name}"
            if not folder.is_dir(follow_symlinks=False):
                extra.append(name)
                continue
            for blob in os.scandir(folder.path):
                if not (
                    _BLOB_NAME.fullmatch(blob.name)
                    and blob.is_file(follow_symlinks=False)
                ):
                    extra.append(f"{name}/{blob.name}")
    return sorted(extra)


def _register_commands() -> None:
    from .scan_cli import register

    register(app)


_register_commands()


@app.command()
def version() -> None:
    """Print the ocilayout version."""
    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Build verified OCI image layouts from an artifact manager's store."""


def _is_usage_error(error: Exception) -> bool:
    # typer raises the UsageError of the click it uses, which may be its own
    # copy, so the class is recognised by name rather than imported.
    return any(kind.__name__ == "UsageError" for kind in type(error).__mro__) and (
        hasattr(error, "format_message")
    )


def main() -> None:
    if "--json" not in sys.argv[1:]:
        try:
            app()
        except OCILayoutError as error:  # raised outside a command's own handler
            typer.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        return

    # With --json, a malformed command line is reported as a JSON document
    # too, so a caller that parses stdout never gets click's plain text.
    try:
        code = app(standalone_mode=False)
    except OCILayoutError as error:
        _fail(error, as_json=True)
    except Exception as error:
        if any(kind.__name__ == "Abort" for kind in type(error).__mro__):
            # click turns a Ctrl-C outside a command's own handler into Abort.
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if not _is_usage_error(error):
            raise
        failure = UsageError(error.format_message())
        hint = "run the command with --help to see its options"
        typer.echo(json.dumps(error_document(failure, hint), indent=2))
        sys.exit(failure.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
