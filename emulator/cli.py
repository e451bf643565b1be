"""Command line of the emulator: create stores, push images, build test images.

Usage::

    python -m emulator init DIR [--db postgresql://USER@HOST/DB]
    python -m emulator push --store DIR [--db URL] --repo KEY --image NAME [--tag TAG] SOURCE
    python -m emulator make-image --out DIR [--platform P ...] [--attestation]
    python -m emulator serve --store DIR --port N --public-key FILE

Errors print one ``error:`` line, and a ``hint:`` line where the fix is known,
and exit with the code of the error class (see ocilayout.errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from ocilayout.errors import OCILayoutError, UsageError
from ocilayout.postgres import check_url, redact_url

from .imagegen import COMPRESSIONS, DEBIAN_PACKAGES, host_platform, make_image
from .push import push
from .serve import add_serve_command, run_serve
from .store import EmulatorStore

_HINTS = {
    "DigestMismatchError": "the source content does not match its descriptor; "
    "rebuild or re-export the source image",
    "DownloadError": "run 'apt-get update' and check access to the package "
    "registries, or point OCILAYOUT_CACHE_DIR at a filled cache",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocilayout-emulator",
        description="Emulate an artifact manager's OCI store for testing ocilayout.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each step to stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create an empty store (idempotent)")
    init.add_argument("directory", help="store directory to create")
    _add_db_option(init)

    push_parser = commands.add_parser(
        "push", help="push an image into a store and print its manifest digest"
    )
    push_parser.add_argument("--store", required=True, help="store directory")
    _add_db_option(push_parser)
    push_parser.add_argument(
        "--repo", required=True, help="repository key, e.g. docker-local"
    )
    push_parser.add_argument(
        "--image", required=True, help="image name, e.g. library/alpine"
    )
    push_parser.add_argument(
        "--tag", help="tag to point at the image (default: push by digest only)"
    )
    push_parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="skip child manifests and blobs missing from the source",
    )
    push_parser.add_argument(
        "source",
        help="OCI layout DIR[:REF], oci-archive FILE[:REF] or docker-archive "
        "FILE[:REPOTAG]",
    )

    make = commands.add_parser(
        "make-image", help="build a real image layout and print JSON describing it"
    )
    make.add_argument("--out", required=True, help="layout directory to write")
    make.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        help=f"os/architecture[/variant], repeatable (default: {host_platform()})",
    )
    make.add_argument(
        "--attestation",
        action="store_true",
        help="add a buildx-style SBOM attestation manifest per platform",
    )
    make.add_argument(
        "--size",
        choices=sorted(DEBIAN_PACKAGES),
        default="small",
        help="package set: small (2 debs, 2 wheels) or demo (8 debs, 5 wheels)",
    )
    make.add_argument(
        "--ref", default="latest", help="ref name of the image in index.json"
    )
    make.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="gzip",
        help="layer compression; tar means uncompressed",
    )
    add_serve_command(commands)
    return parser


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="keep the metadata rows in PostgreSQL at this postgresql:// URL "
        "instead of the store's SQLite file; blobs stay under the store "
        "directory (the password comes from PGPASSWORD or ~/.pgpass)",
    )


def _check_db_url(url: str) -> str:
    """Reject what is not a PostgreSQL URL, and any URL with a password.

    A password on a command line is readable by every local user, so it
    comes from PGPASSWORD or ~/.pgpass, as for ocilayout itself.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            f"--db {redact_url(url)!r} is not a PostgreSQL URL; use "
            "postgresql://USER@HOST[:PORT]/DATABASE, or leave --db out to "
            "keep the rows in the store's SQLite file"
        )
    check_url(url)
    return url


def run(arguments: argparse.Namespace) -> None:
    if arguments.command == "init":
        if arguments.db is not None:
            from . import postgres

            store = postgres.PostgresStore.init(
                arguments.directory, _check_db_url(arguments.db)
            )
        else:
            store = EmulatorStore.init(arguments.directory)
        print(store.root)
    elif arguments.command == "push":
        if arguments.db is not None:
            from . import postgres

            digest = postgres.push(
                postgres.PostgresStore(arguments.store, _check_db_url(arguments.db)),
                arguments.repo,
                arguments.image,
                arguments.tag,
                arguments.source,
                allow_partial=arguments.allow_partial,
            )
            print(digest)
            return
        store = EmulatorStore(arguments.store)
        digest = push(
            store,
            arguments.repo,
            arguments.image,
            arguments.tag,
            arguments.source,
            allow_partial=arguments.allow_partial,
        )
        print(digest)
    elif arguments.command == "serve":
        run_serve(arguments)
    else:
        result = make_image(
            arguments.out,
            platforms=arguments.platforms or [host_platform()],
            attestation=arguments.attestation,
            size=arguments.size,
            ref=arguments.ref,
            compression=arguments.compression,
        )
        print(json.dumps(result.to_json(), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if arguments.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        run(arguments)
    except OCILayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        hint = _HINTS.get(type(exc).__name__)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg"):
            raise
        where = redact_url(arguments.db or "")
        print(f"error: PostgreSQL at {where}: {exc}".rstrip(), file=sys.stderr)
        print("hint: check the URL, that the server runs, and PGPASSWORD", file=sys.stderr)
        return 1
    return 0
