"""The ``scan`` command: parse options, run the scan pipeline, map errors to exit codes.

The exit codes are listed in ``EXIT_CODES``, which ``scan --help`` also shows.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .cli import (
    CACHE_DIR_HELP,
    DB_HELP,
    LAYOUT_HELP,
    NO_CACHE_HELP,
    REGISTRY_ROOT_HELP,
    STORE_HELP,
    Progress,
    metadata_source,
    open_cache,
)
from .errors import IntegrityError, MetadataMissingError, OCILayoutError

EXIT_INTERRUPTED = 130
REGISTRY_ENV = "OCILAYOUT_REGISTRY"

# Attributes of an error copied into the JSON failure document when set.
_ERROR_FIELDS = (
    "reason",
    "digest",
    "manifest",
    "path",
    "candidates",
    "scanner",
    "kind",
    "returncode",
    "timeout",
    "stderr",
    "target",
    "fallback",
)


EXIT_CODES = """\
0    the scan finished and its result is trusted
1    other error
2    invalid usage
3    image, tag or repository not found
4    no local layout is possible and no registry fallback could run
5    stored content is wrong (an integrity error never falls back)
6    the scanner failed, or its result is not trusted
7    the scanner binary is missing
8    the scanner timed out
130  interrupted (Ctrl-C or SIGTERM)"""


class ScannerName(str, Enum):
    grype = "grype"
    syft = "syft"
    trivy = "trivy"


def register(app: typer.Typer) -> None:
    """Add the ``scan`` command to ``app``."""
    # "\b" keeps click from rewrapping the table.
    app.command("scan", epilog=f"\b\nExit codes:\n{EXIT_CODES}")(scan)


def scan(
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    registry_root: Optional[Path] = typer.Option(
        None, "--registry-root", help=REGISTRY_ROOT_HELP
    ),
    layout_dir: Optional[Path] = typer.Option(None, "--layout", help=LAYOUT_HELP),
    digest: Optional[str] = typer.Option(
        None, "--digest", help="Manifest or index digest, sha256:<hex>."
    ),
    image: Optional[str] = typer.Option(
        None,
        "--image",
        help="Image name, used with --tag; the registry fallback needs it.",
    ),
    tag: Optional[str] = typer.Option(
        None,
        "--tag",
        help="Tag of --image; it is pinned to its digest before scanning.",
    ),
    repo: Optional[str] = typer.Option(
        None,
        "--repo",
        help="Repository key; optional when the image is in one repository only.",
    ),
    platform: Optional[str] = typer.Option(
        None,
        "--platform",
        help="os/arch[/variant] to pick from an index; default: the host's.",
    ),
    scanner: ScannerName = typer.Option(
        ScannerName.syft, "--scanner", help="Scanner to run."
    ),
    scanner_path: Optional[Path] = typer.Option(
        None,
        "--scanner-path",
        help="Scanner binary; default: $OCILAYOUT_<SCANNER>, then PATH.",
    ),
    timeout: float = typer.Option(
        1800.0,
        "--timeout",
        min=1,
        help="Seconds the scanner may run before it is stopped.",
    ),
    registry: Optional[str] = typer.Option(
        None,
        "--registry",
        envvar=REGISTRY_ENV,
        help="Registry host[:port] to scan through when no local layout is possible.",
    ),
    registry_insecure: bool = typer.Option(
        False,
        "--registry-insecure",
        help="Reach the registry over plain HTTP (loopback test registries).",
    ),
    token_key: Optional[Path] = typer.Option(
        None,
        "--token-key",
        help="PEM private key (EC P-256 or RSA) that signs the pull token; default: $OCILAYOUT_TOKEN_KEY_FILE or $OCILAYOUT_TOKEN_KEY.",
    ),
    token_issuer: str = typer.Option(
        "ocilayout", "--token-issuer", help="Issuer claim of the pull token."
    ),
    token_audience: Optional[str] = typer.Option(
        None,
        "--token-audience",
        help="Audience claim (the registry's service name); default: the --registry value.",
    ),
    token_ttl: Optional[int] = typer.Option(
        None,
        "--token-ttl",
        min=1,
        help="Pull token lifetime in seconds; default: the timeout plus 60.",
    ),
    anonymous: bool = typer.Option(
        False,
        "--anonymous",
        help="Send the scanner to the registry without credentials.",
    ),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Accept zero packages from an image that has layers.",
    ),
    workspace: Optional[Path] = typer.Option(
        None,
        "--workspace",
        help="Folder for the private temporary layout; default: the system temporary folder.",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help=NO_CACHE_HELP),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help=CACHE_DIR_HELP
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON document on stdout, also on failure."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log pipeline steps to stderr."
    ),
) -> None:
    """Scan one image, from a local layout or else its registry.

    The scan reads a verified layout built in a private workspace. Only when
    no local layout is possible (exit 4 of build) and --registry is given
    does it scan the registry by digest.
    """
    # The scan modules load only when this command runs, to keep the other
    # commands' start-up short.
    from .scan import RegistryFallback, scan_image

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    _install_signal_handlers()
    fallback = None
    if registry:
        fallback = RegistryFallback(
            host=registry,
            insecure=registry_insecure,
            token_key=token_key,
            anonymous=anonymous,
            issuer=token_issuer,
            audience=token_audience,
            token_ttl=token_ttl,
        )
    cache = None
    progress = Progress(scanner.value) if sys.stderr.isatty() and not as_json else None
    try:
        cache = open_cache(no_cache, cache_dir)
        outcome = scan_image(
            metadata_source(store, db, registry_root, layout_dir),
            digest=digest,
            image=image,
            tag=tag,
            repo=repo,
            platform=platform,
            scanner=scanner.value,
            scanner_path=scanner_path,
            timeout=timeout,
            registry=fallback,
            allow_empty=allow_empty,
            workspace=workspace,
            cache=cache,
            progress=progress,
        )
    except OCILayoutError as error:
        if progress:
            progress.finish()
        _fail(error, as_json)
    except KeyboardInterrupt:
        if progress:
            progress.finish()
        typer.echo("interrupted; the scan workspace was removed", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    finally:
        if cache is not None:
            cache.close()
    if progress:
        progress.finish()
    if as_json:
        typer.echo(json.dumps({"ok": True, **outcome.to_json()}, indent=2))
        return
    _print_outcome(outcome)


def _print_outcome(outcome) -> None:
    report = outcome.report
    if outcome.fallback:
        typer.echo(
            f"warning: no local layout ({outcome.fallback['reason']}): "
            f"{outcome.fallback['message']}",
            err=True,
        )
    for warning in outcome.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"scanned {outcome.target} with {outcome.scanner}")
    typer.echo(f"  manifest  {outcome.manifest_digest}")
    typer.echo(f"  packages  {report.package_count}")
    if report.vulnerabilities is not None:
        counts: dict[str, int] = {}
        for match in report.vulnerabilities:
            counts[match.severity] = counts.get(match.severity, 0) + 1
        summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
        typer.echo(
            f"  vulnerabilities  {len(report.vulnerabilities)} ({summary or 'none'})"
        )


def _hint_for(error: OCILayoutError) -> str | None:
    from .scan import FallbackUnavailableError
    from .scanners import (
        ScannerFailedError,
        ScannerNotFoundError,
        ScanTimeoutError,
        binary_variable,
    )

    if isinstance(error, ScannerNotFoundError):
        variable = binary_variable(error.scanner)
        return f"install {error.scanner}, or point --scanner-path or {variable} at it"
    if isinstance(error, ScanTimeoutError):
        return "raise --timeout, or check that the scanner can read the image"
    if isinstance(error, ScannerFailedError) and error.kind == "unauthorized":
        return (
            "the registry rejected the scanner's credentials; pass --token-key "
            "(or set OCILAYOUT_TOKEN_KEY_FILE) with the key the registry trusts"
        )
    if isinstance(error, ScannerFailedError):
        return "the scan result is not trusted; read the scanner's stderr above"
    if isinstance(error, FallbackUnavailableError):
        return "give the options the message names, so the fallback can pin the image"
    if isinstance(error, MetadataMissingError):
        return (
            "no local layout is possible; pass --registry HOST to scan the image "
            "through its registry by digest"
        )
    if isinstance(error, IntegrityError):
        return (
            "the store's content does not match its metadata; this image is not "
            "scanned until the store is repaired"
        )
    return None


def _fail(error: OCILayoutError, as_json: bool) -> None:
    hint = _hint_for(error)
    if as_json:
        from .cli import error_document

        document = error_document(error, hint, _ERROR_FIELDS)
        typer.echo(json.dumps(document, indent=2))
    else:
        fallback = getattr(error, "fallback", None)
        if fallback:
            typer.echo(
                f"note: scanned through the registry because no local layout is "
                f"possible ({fallback['reason']}): {fallback['message']}",
                err=True,
            )
        typer.echo(f"error: {error}", err=True)
        stderr = getattr(error, "stderr", "")
        lines = stderr.splitlines()
        if lines and lines[-1] not in str(error):
            typer.echo("scanner stderr (last lines):", err=True)
            typer.echo("  " + stderr.replace("\n", "\n  "), err=True)
        if hint:
            typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(error.exit_code)


def _install_signal_handlers() -> None:
    # SIGTERM becomes KeyboardInterrupt, so the workspace is removed as on Ctrl-C.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
