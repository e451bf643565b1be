"""A read-only OCI distribution endpoint over an emulated store, on loopback.

python -m emulator serve --store DIR --port N --public-key FILE

It serves what a scanner pulling ``registry:127.0.0.1:N/<repo key>/<image>``
needs: ``GET``/``HEAD`` on ``/v2/``, on ``/v2/<repo key>/<image>/manifests/<tag
or digest>`` and on ``/v2/<repo key>/<image>/blobs/<digest>``. Every request
must carry ``Authorization: Bearer <token>``, a JWT signed by the key whose
public half the server trusts, unexpired, for this service as audience, and
for manifests and blobs granting ``pull`` on exactly that repository name.
Anything else gets ``401`` with the ``WWW-Authenticate: Bearer`` challenge a
registry sends. The realm named in the challenge issues no tokens: it responds
with ``401 UNAUTHORIZED``, which a scanner without credentials then reports.

The server binds 127.0.0.1 only and never writes to the store.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from ocilayout.digest import Digest, parse_digest
from ocilayout.errors import OCILayoutError, UsageError
from ocilayout.store import Repository, SQLiteMetadata
from ocilayout.token import TokenError, load_public_key, pull_scope, verify_token

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
TOKEN_PATH = "/token"
_CHUNK = 1024 * 1024
# Repository names as the distribution specification defines them.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_ROUTE = re.compile(
    rf"^/v2/(?P<name>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$"
)


class _Reply(Exception):
    """An error response: status, registry error code, message, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class RegistryServer(ThreadingHTTPServer):
    """The endpoint: a threading HTTP server bound to 127.0.0.1."""

    daemon_threads = True

    def __init__(
        self,
        store: str | os.PathLike[str],
        public_key: Any,
        *,
        port: int = 0,
        service: str | None = None,
        issuer: str | None = None,
    ):
        self.store = Path(store).resolve()
        # Open once so a wrong store fails at start, not on the first request.
        SQLiteMetadata.for_store(self.store).close()
        self.public_key = public_key
        self.issuer = issuer
        super().__init__((LOOPBACK, port), _Handler)
        self.service = service or self.authority
        self._thread: threading.Thread | None = None

    @property
    def authority(self) -> str:
        """The ``host:port`` a scanner puts in front of repository names."""
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    def start(self) -> RegistryServer:
        """Serve in a background thread; return self for chaining."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="emulator-registry", daemon=True
        )
        self._thread.start()
        logger.info("serving %s at %s (service %s)", self.store, self.url, self.service)
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        logger.info("stopped serving %s", self.url)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"
    server_version = "ocilayout-emulator"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _read_only(self) -> None:
        self._send_error(_Reply(405, "UNSUPPORTED", "this registry is read-only"), True)

    do_POST = do_PUT = do_PATCH = do_DELETE = _read_only

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only: headers, and so tokens, are never logged.
        # A TLS handshake sent to this plain-HTTP port arrives as binary, so
        # non-printable characters are escaped.
        line = (format % args).encode("ascii", "backslashreplace").decode()
        printable = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
        logger.info("%s %s", self.address_string(), printable)

    def _dispatch(self, send_body: bool) -> None:
        try:
            self._route(send_body)
        except _Reply as reply:
            self._send_error(reply, send_body)
        except (OCILayoutError, OSError) as exc:
            logger.error("%s %s failed: %s", self.command, self.path, exc)
            self._send_error(_Reply(500, "UNKNOWN", str(exc)), send_body)

    def _route(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == TOKEN_PATH:
            raise _Reply(
                401,
                "UNAUTHORIZED",
                "authentication required: this registry issues no tokens; "
                "present a bearer token signed by the trusted key",
            )
        if path in ("/v2", "/v2/"):
            self._authorize(None)
            self._send(200, b"{}", {"Content-Type": "application/json"}, send_body)
            return
        match = _ROUTE.match(path)
        if match is None:
            raise _Reply(404, "NOT_FOUND", f"no such endpoint: {path}")
        name = match["name"]
        self._authorize(name)
        if "/" not in name:
            raise _Reply(
                404, "NAME_UNKNOWN", f"repository name {name} lacks an image part"
            )
        repo_key, image = name.split("/", 1)
        source = SQLiteMetadata.for_store(self.server.store)
        try:
            repo = source.repository(repo_key)
            if repo is None:
                raise _Reply(404, "NAME_UNKNOWN", f"repository {repo_key} not found")
            if match["kind"] == "manifests":
                self._manifest(source, repo, image, match["reference"], send_body)
            else:
                self._blob(source, repo, match["reference"], send_body)
        finally:
            source.close()

    # Authorization

    def _authorize(self, repository: str | None) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = self._challenge(repository, error=None)
        if scheme.lower() != "bearer" or not token.strip():
            raise _Reply(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": challenge},
            )
        try:
            verify_token(
                token.strip(),
                self.server.public_key,
                audience=self.server.service,
                repository=repository,
                issuer=self.server.issuer,
            )
        except TokenError as exc:
            logger.warning("%s %s: rejected token: %s", self.command, self.path, exc)
            raise _Reply(
                401,
                "UNAUTHORIZED",
                f"authentication required: {exc}",
                {"WWW-Authenticate": self._challenge(repository, "invalid_token")},
            ) from None

    def _challenge(self, repository: str | None, error: str | None) -> str:
        parts = [
            f'realm="{self.server.url}{TOKEN_PATH}"',
            f'service="{self.server.service}"',
        ]
        if repository is not None:
            parts.append(f'scope="{pull_scope(repository)}"')
        if error is not None:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    # Content

    def _manifest(
        self,
        source: SQLiteMetadata,
        repo: Repository,
        image: str,
        reference: str,
        send_body: bool,
    ) -> None:
        if ":" in reference:
            digest = _digest_or_reply(reference, "MANIFEST_INVALID")
        else:
            tag = source.tag(repo, image, reference)
            if tag is None:
                raise _Reply(
                    404, "MANIFEST_UNKNOWN", f"tag {image}:{reference} not found"
                )
            digest = _digest_or_reply(tag.manifest_digest, "MANIFEST_INVALID")
        # NOTE: a digest reference is looked up in the whole repository, not
        # only under this image name, because the artifacts rows the
        # MetadataSource exposes are keyed by repository and storage key.
        stored = source.manifest(repo, str(digest))
        if stored is None:
            raise _Reply(404, "MANIFEST_UNKNOWN", f"manifest {digest} not found")
        body = _read_verified(source, repo, stored.storage_key, digest)
        headers = {
            "Content-Type": stored.content_type,
            "Docker-Content-Digest": str(digest),
        }
        self._send(200, body, headers, send_body)

    def _blob(
        self, source: SQLiteMetadata, repo: Repository, reference: str, send_body: bool
    ) -> None:
        digest = _digest_or_reply(reference, "DIGEST_INVALID")
        row = source.blob(repo, str(digest))
        if row is None:
            raise _Reply(404, "BLOB_UNKNOWN", f"blob {digest} not found")
        try:
            fd, _ = source.open_blob(repo, row.storage_key)
        except FileNotFoundError:
            raise _Reply(
                404, "BLOB_UNKNOWN", f"blob {digest} file is missing"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(row.size))
            self.send_header("Docker-Content-Digest", str(digest))
            self.end_headers()
            if send_body:
                while chunk := handle.read(_CHUNK):
                    self.wfile.write(chunk)

    # Responses

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], send_body: bool
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_error(self, reply: _Reply, send_body: bool) -> None:
        document = {"errors": [{"code": reply.code, "message": reply.message}]}
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        self._send(reply.status, body, headers, send_body)


def _digest_or_reply(value: str, code: str) -> Digest:
    try:
        return parse_digest(value)
    except UsageError as exc:
        raise _Reply(400, code, str(exc)) from None


def _read_verified(
    source: SQLiteMetadata, repo: Repository, key: str, digest: Digest
) -> bytes:
    try:
        fd, path = source.open_blob(repo, key)
    except FileNotFoundError:
        raise _Reply(
            404, "MANIFEST_UNKNOWN", f"manifest {digest} file is missing"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    if Digest.of_bytes(data, digest.algorithm) != digest:
        # Serving it would hand the client content that fails its own check.
        raise _Reply(500, "UNKNOWN", f"stored manifest {path} does not match {digest}")
    return data


# Command line


def add_serve_command(
    subparsers: argparse._SubParsersAction,
) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the emulator's argument parser."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a store read-only over the OCI distribution API on 127.0.0.1",
    )
    parser.add_argument("--store", required=True, help="store directory")
    parser.add_argument(
        "--port", type=int, default=5000, help="TCP port on 127.0.0.1 (0: any free)"
    )
    parser.add_argument(
        "--public-key",
        required=True,
        help="PEM public key (or private key) whose tokens the server accepts",
    )
    parser.add_argument(
        "--service",
        help="token audience and challenge service (default: 127.0.0.1:PORT)",
    )
    parser.add_argument("--issuer", help="required token issuer (default: any)")
    parser.set_defaults(run=run_serve)
    return parser


def run_serve(arguments: argparse.Namespace) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM).

    Raises UsageError for an unreadable public key and OSError when the port
    cannot be bound.
    """
    try:
        public_key = load_public_key(arguments.public_key)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot load public key {arguments.public_key}: {exc}; give a PEM "
            "public key (or the private key) of the token signer"
        ) from None
    server = RegistryServer(
        arguments.store,
        public_key,
        port=arguments.port,
        service=arguments.service,
        issuer=arguments.issuer,
    )
    print(
        f"serving {server.store} at {server.url} (service {server.service})",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupt())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _interrupt() -> None:
    raise KeyboardInterrupt()


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Run ``serve`` alone: ``python -m emulator.serve --store DIR ...``."""
    parser = argparse.ArgumentParser(prog="ocilayout-emulator")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        arguments.run(arguments)
    except OCILayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
