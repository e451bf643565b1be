"""The scan pipeline: scan a local OCI layout first, the registry by digest second.

``scan_image`` builds the image's single-platform layout in a private
temporary workspace and runs the scanner on ``oci-dir:<layout>`` (Trivy:
``image --input <layout>``). When no local layout is possible because the
store lacks metadata (``MetadataMissingError``: no blob rows, a child
manifest body not stored, no database), it scans
``registry:<host>/<repo key>/<image>@<digest>`` instead and records why. The
reference is pinned by digest, so a moved tag cannot change what is scanned.
Content that is present but wrong (``IntegrityError``) never falls back, and
the scan fails.

Registry credentials are a token minted for this one repository with pull
access only, handed to the scanner through its environment and redacted from
every message, log line and report this module produces. The workspace is
removed on success, failure, timeout and interruption.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .build import (
    WRITABLE_LINKS_WARNING,
    ProgressFn,
    open_store_source,
    temporary_layout,
)
from .cache import VerifyCache
from .digest import parse_digest
from .errors import MetadataMissingError, OCILayoutError, UsageError
from .scanners import (
    Invocation,
    LocalTarget,
    Profile,
    RegistryTarget,
    ScanError,
    ScannerFailedError,
    ScannerNotFoundError,
    ScanReport,
    ScanTimeoutError,
    Target,
    classify_line,
    find_binary,
    get_profile,
    strip_ansi,
)
from .store import MetadataSource

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1800.0
# Extra token lifetime beyond the scanner timeout, for clock skew and startup.
TOKEN_MARGIN_SECONDS = 60
# The stderr kept for error messages: the last lines, each cut to a length.
STDERR_TAIL_LINES = 40
MAX_LINE_CHARS = 2000
MAX_PROBLEM_LINES = 20
# Seconds a scanner gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0

# Reasons whose ``digest`` names the manifest being resolved, not a blob.
_MANIFEST_REASONS = ("no-blob-rows", "manifest-body-missing")
_REDACTED = "[REDACTED]"
# A credential after "Bearer" is at least 16 characters, which spares prose
# such as "a bearer token".
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{16,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class FallbackUnavailableError(MetadataMissingError):
    """No local layout is possible, and the registry fallback cannot run either.

    ``reason`` is that of the original MetadataMissingError.
    """


@dataclass(frozen=True)
class RegistryFallback:
    """The registry to scan through when no local layout is possible.

    ``host`` is the registry authority (``host:port``) and ``insecure`` means
    plain HTTP. Unless ``anonymous`` is set, a pull token is minted with the
    key from ``token_key`` or from the ``OCILAYOUT_TOKEN_KEY_FILE`` or
    ``OCILAYOUT_TOKEN_KEY`` environment variables. ``audience`` defaults to
    ``host``, and ``token_ttl`` to the scanner timeout plus a minute.
    """

    host: str
    insecure: bool = False
    token_key: str | os.PathLike[str] | None = None
    anonymous: bool = False
    issuer: str = "ocilayout"
    audience: str | None = None
    token_ttl: int | None = None


@dataclass
class ScanOutcome:
    """A completed, trusted scan: where it ran, why, and what it found."""

    scanner: str
    source: str
    target: str
    repository: str | None
    image: str | None
    manifest_digest: str
    report: ScanReport
    fallback: dict | None = None
    credentials: dict | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "scanner": self.scanner,
            "source": self.source,
            "target": self.target,
            "repository": self.repository,
            "image": self.image,
            "manifest_digest": self.manifest_digest,
            "fallback": self.fallback,
            "credentials": self.credentials,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            **self.report.to_json(),
        }


def scan_image(
    store: str | os.PathLike[str] | MetadataSource,
    *,
    digest: str | None = None,
    image: str | None = None,
    tag: str | None = None,
    repo: str | None = None,
    platform: str | None = None,
    scanner: str = "syft",
    scanner_path: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    registry: RegistryFallback | None = None,
    allow_empty: bool = False,
    workspace: str | os.PathLike[str] | None = None,
    cache: VerifyCache | None = None,
    progress: ProgressFn | None = None,
) -> ScanOutcome:
    """Scan one image of the store, locally when possible, else through ``registry``.

    The image is named by ``digest`` or by ``image`` and ``tag``. Without
    ``registry``, a missing-metadata failure is raised as it is. The result
    is trusted only when the scanner exits 0, prints no fatal error and, from
    an image with layers, catalogues at least one package (unless
    ``allow_empty``). With a verification ``cache``, blobs verified by an
    earlier build or scan are not hashed again. ``progress`` receives the
    build's events, then ``scanner-start`` and ``scanner-end`` around the
    scanner's run. Raises an OCILayoutError
    subclass; scanner failures are
    ScanError subclasses (ScannerFailedError, ScannerNotFoundError,
    ScanTimeoutError).
    """
    if timeout <= 0:
        raise UsageError(f"invalid timeout {timeout}: expected seconds > 0")
    profile = get_profile(scanner)
    pipeline = _Pipeline(
        store=store,
        request=_Request(digest, image, tag, repo, platform),
        profile=profile,
        binary=find_binary(profile.name, scanner_path),
        timeout=timeout,
        registry=registry,
        allow_empty=allow_empty,
        cache=cache,
        progress=progress,
    )
    return pipeline.run(workspace)


@dataclass(frozen=True)
class _Request:
    digest: str | None
    image: str | None
    tag: str | None
    repo: str | None
    platform: str | None


@dataclass
class _Completed:
    returncode: int
    stderr_tail: list[str]
    problems: list[tuple[str, str]]


@dataclass
class _Pipeline:
    store: str | os.PathLike[str] | MetadataSource
    request: _Request
    profile: Profile
    binary: str
    timeout: float
    registry: RegistryFallback | None
    allow_empty: bool
    cache: VerifyCache | None = None
    progress: ProgressFn | None = None
    secrets: list[str] = field(default_factory=list)

    def run(self, workspace: str | os.PathLike[str] | None) -> ScanOutcome:
        started = time.monotonic()
        folder = _make_workspace(workspace)
        try:
            try:
                outcome = self._scan_local(folder)
            except MetadataMissingError as missing:
                outcome = self._scan_registry(folder, missing)
        except ScanError:
            raise
        except OCILayoutError as error:
            # No message may carry the minted token, whatever raised it.
            error.args = tuple(self.redact(str(arg)) for arg in error.args)
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        outcome.seconds = time.monotonic() - started
        return outcome

    # The two paths

    def _scan_local(self, folder: Path) -> ScanOutcome:
        request = self.request
        with temporary_layout(
            self.store,
            workspace=folder,
            sync=False,
            cache=self.cache,
            progress=self.progress,
            digest=request.digest,
            image=request.image,
            tag=request.tag,
            repo=request.repo,
            platform=request.platform,
        ) as built:
            target = LocalTarget(built.output)
            layers = len(built.placements) - 1 + len(built.skipped)
            report = self._execute(target, folder, None, expected_layers=layers)
        return ScanOutcome(
            scanner=self.profile.name,
            source="local",
            target=target.describe(),
            repository=built.repository,
            image=request.image,
            manifest_digest=built.manifest_digest,
            report=report,
            # The scanner only reads the private workspace, so shared
            # writable inodes are no risk there, and scan has no --link.
            warnings=[w for w in built.warnings if WRITABLE_LINKS_WARNING not in w],
        )

    def _scan_registry(
        self, folder: Path, missing: MetadataMissingError
    ) -> ScanOutcome:
        if self.registry is None:
            raise missing
        repository, image, path, digest, names_image = self._fallback_reference(
            missing
        )
        target = RegistryTarget(
            host=self.registry.host,
            repository=path,
            digest=digest,
            insecure=self.registry.insecure,
            platform=None if names_image else self.request.platform,
        )
        fallback = {
            "reason": missing.reason,
            "message": str(missing),
            "missing_digest": missing.digest,
            "target_digest": digest,
            "names_image_manifest": names_image,
        }
        log.info(
            "no local layout (%s: %s); scanning %s",
            missing.reason,
            missing,
            target.describe(),
        )
        token, credentials = self._credentials(target)
        try:
            report = self._execute(target, folder, token, expected_layers=None)
        except ScanError as error:
            error.fallback = fallback
            raise
        return ScanOutcome(
            scanner=self.profile.name,
            source="registry",
            target=target.describe(),
            repository=repository,
            image=image,
            manifest_digest=digest,
            report=report,
            fallback=fallback,
            credentials=credentials,
        )

    # Fallback reference and credentials

    def _fallback_reference(
        self, missing: MetadataMissingError
    ) -> tuple[str, str, str, str, bool]:
        """Return (repository key, image, registry path, digest, digest names an
        image manifest)."""
        repository, image, path, top = self._locate_top(missing)
        if missing.reason == "blob-row-missing" and missing.manifest:
            return repository, image, path, missing.manifest, True
        if missing.reason in _MANIFEST_REASONS and missing.digest:
            # The manifest resolution reached: for an index, the chosen child.
            return (
                repository,
                image,
                path,
                missing.digest,
                missing.reason == "no-blob-rows",
            )
        # NOTE: when the database itself is unavailable the chosen child is
        # unknown, so an index is scanned by its own digest and the scanner
        # picks the platform.
        return repository, image, path, top, False

    def _locate_top(
        self, missing: MetadataMissingError
    ) -> tuple[str, str, str, str]:
        """Find the repository key, image name, registry path and top-level
        digest of the fallback."""
        request = self.request
        digest = request.digest
        if digest is None and (request.tag or "").startswith(("sha256:", "sha512:")):
            digest = str(parse_digest(request.tag, "tag"))
        try:
            source, owned = open_store_source(self.store)
        except MetadataMissingError:
            if request.repo and digest and request.image:
                path = f"{request.repo}/{request.image}"
                return request.repo, request.image, path, digest
            raise FallbackUnavailableError(
                f"{missing}; without the metadata database the registry fallback "
                "cannot pin the tag to a digest, find the repository or name the "
                "image, so pass --repo, --image and --digest",
                reason=missing.reason,
                digest=missing.digest,
            ) from None
        try:
            repository, top = _locate_with(source, request, digest, missing)
            image = request.image or _image_of(source, repository, top, missing)
            # In a plain registry's tree a repository is one image, and the
            # registry serves it under its own name, not <repository>/<image>.
            if getattr(source, "repository_is_image", False):
                path = repository
            else:
                path = f"{repository}/{image}"
            return repository, image, path, top
        finally:
            if owned:
                source.close()

    def _credentials(self, target: RegistryTarget) -> tuple[str | None, dict | None]:
        registry = self.registry
        if registry.anonymous:
            return None, None
        from .token import load_signing_key, mint_token

        key = load_signing_key(registry.token_key)
        token = mint_token(
            key,
            target.repository,
            audience=registry.audience or registry.host,
            issuer=registry.issuer,
            ttl=registry.token_ttl or int(self.timeout) + TOKEN_MARGIN_SECONDS,
        )
        self.secrets.append(token.value)
        credentials = {
            **token.describe(),
            "environment": list(self.profile.credential_variables),
        }
        return token.value, credentials

    # Running the scanner and judging its result

    def _execute(
        self,
        target: Target,
        folder: Path,
        token: str | None,
        expected_layers: int | None,
    ) -> ScanReport:
        reports = folder / "reports"
        reports.mkdir(mode=0o700, exist_ok=True)
        invocation = self.profile.invocation(self.binary, target, reports, token)
        log.info("running %s on %s", self.profile.name, target.describe())
        if self.progress is not None:
            self.progress("scanner-start", 0)
        try:
            try:
                completed = self._run_process(invocation, folder, target)
            finally:
                if self.progress is not None:
                    self.progress("scanner-end", 0)
            return self._judge(completed, invocation, target, expected_layers)
        except ScanError as error:
            error.target = target.describe()
            raise

    def _run_process(
        self, invocation: Invocation, folder: Path, target: Target
    ) -> _Completed:
        environment = self.profile.inherited_environment(dict(os.environ))
        environment.update(invocation.environment)
        process = self._start(invocation, environment, folder)
        stderr = _LineCapture(process.stderr, self.redact, classify=True)
        stdout = _LineCapture(process.stdout, self.redact, classify=False)
        try:
            returncode = process.wait(timeout=self.timeout)
            _stop_leftovers(process)
        except subprocess.TimeoutExpired:
            _stop(process)
            stderr.join()
            raise ScanTimeoutError(
                f"{self.profile.name} did not finish scanning {target.describe()} "
                f"within {self.timeout:g} seconds and was stopped; raise --timeout "
                f"if the image is large{_tail_text(stderr.tail)}",
                scanner=self.profile.name,
                timeout=self.timeout,
                stderr="\n".join(stderr.tail),
            ) from None
        except BaseException:
            _stop(process)
            raise
        finally:
            stderr.join()
            stdout.join()
        return _Completed(returncode, list(stderr.tail or stdout.tail), stderr.problems)

    def _start(
        self, invocation: Invocation, environment: dict[str, str], folder: Path
    ) -> subprocess.Popen:
        try:
            # A new session lets a timeout or Ctrl-C stop the scanner's whole
            # process group, and keeps the terminal's Ctrl-C away from it.
            return subprocess.Popen(
                invocation.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
                cwd=folder,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ScannerNotFoundError(
                f"cannot run {self.profile.name} at {self.binary}: {exc.strerror}",
                scanner=self.profile.name,
                path=self.binary,
            ) from None

    def _judge(
        self,
        completed: _Completed,
        invocation: Invocation,
        target: Target,
        expected_layers: int | None,
    ) -> ScanReport:
        name = self.profile.name
        where = target.describe()
        tail = "\n".join(completed.stderr_tail)
        kinds = {kind for kind, _ in completed.problems}
        first = completed.problems[0][1] if completed.problems else ""
        if "unauthorized" in kinds:
            line = next(
                text for kind, text in completed.problems if kind == "unauthorized"
            )
            raise ScannerFailedError(
                f"{name} was not authorized by the registry for {where} "
                f"(exit status {completed.returncode}): {line}",
                scanner=name,
                kind="unauthorized",
                returncode=completed.returncode,
                stderr=tail,
            )
        if completed.returncode != 0:
            raise ScannerFailedError(
                f"{name} failed on {where} with exit status "
                f"{completed.returncode}{_tail_text(completed.stderr_tail)}",
                scanner=name,
                kind="exit-status",
                returncode=completed.returncode,
                stderr=tail,
            )
        if "fatal" in kinds:
            raise ScannerFailedError(
                f"{name} exited 0 on {where} but reported a fatal error, so the "
                f"result is not trusted: {first}",
                scanner=name,
                kind="fatal-stderr",
                returncode=0,
                stderr=tail,
            )
        report = self.profile.parse(invocation.reports)
        self._check_not_empty(report, where, expected_layers, tail)
        return report

    def _check_not_empty(
        self,
        report: ScanReport,
        where: str,
        expected_layers: int | None,
        tail: str,
    ) -> None:
        if report.package_count > 0 or self.allow_empty:
            return
        layers = report.layer_count
        if layers is None:
            layers = expected_layers
        if layers == 0:
            return
        counted = "an unknown number of" if layers is None else str(layers)
        raise ScannerFailedError(
            f"{self.profile.name} catalogued no packages from {where}, which has "
            f"{counted} layer(s); an empty result from a non-empty image counts "
            "as a failed scan (pass --allow-empty if the image has no packages)",
            scanner=self.profile.name,
            kind="empty-report",
            returncode=0,
            stderr=tail,
        )

    def redact(self, text: str) -> str:
        """Remove every minted token, bearer credential and JWT from ``text``."""
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        text = _BEARER.sub(lambda match: match[1] + _REDACTED, text)
        return _JWT.sub(_REDACTED, text)


class _LineCapture:
    """Read a pipe line by line in a thread, keeping a bounded, redacted tail."""

    def __init__(self, stream: IO[bytes], redact: Any, classify: bool):
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.problems: list[tuple[str, str]] = []
        self._stream = stream
        self._redact = redact
        self._classify = classify
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stream:
            # A bounded readline keeps memory flat on output without newlines.
            while raw := self._stream.readline(64 * 1024):
                text = strip_ansi(raw.decode("utf-8", "replace")).rstrip("\r\n")
                line = self._redact(text)[:MAX_LINE_CHARS]
                self.tail.append(line)
                if not self._classify or len(self.problems) >= MAX_PROBLEM_LINES:
                    continue
                kind = classify_line(line)
                if kind is not None:
                    self.problems.append((kind, line))

    def join(self) -> None:
        self._thread.join(timeout=STOP_GRACE_SECONDS)


def _stop_leftovers(process: subprocess.Popen) -> None:
    """Kill what the exited scanner left running in its process group.

    The scanner leads its own session, so the group id is its pid, and the
    kernel keeps that id from reuse while any member is alive.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(process: subprocess.Popen) -> None:
    """Stop the scanner's process group: SIGTERM, then SIGKILL after a grace time."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail_text(lines: Any) -> str:
    shown = [line for line in list(lines)[-10:] if line.strip()]
    if not shown:
        return ""
    return ":\n  " + "\n  ".join(shown)


def _make_workspace(parent: str | os.PathLike[str] | None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ocilayout-scan-", dir=parent))
    if any(ch in str(folder) for ch in ":@="):
        shutil.rmtree(folder, ignore_errors=True)
        raise UsageError(
            f"workspace path {folder} contains ':', '@' or '=', which scanners "
            "misread in a source or output option; choose another workspace"
        )
    return folder


def _image_of(
    source: MetadataSource, repository: str, digest: str, missing: MetadataMissingError
) -> str:
    """Return the image name a digest was pushed under, if the store records one."""
    repo = source.repository(repository)
    names = source.image_names(repo, digest) if repo else []
    if len(names) != 1:
        found = f"{len(names)} ({', '.join(names)})" if names else "none"
        raise FallbackUnavailableError(
            f"{missing}; the registry fallback needs one image name for {digest} "
            f"in repository {repository} but the store records {found}, so pass "
            "--image",
            reason=missing.reason,
            digest=missing.digest,
        )
    return names[0]


def _locate_with(
    source: MetadataSource,
    request: _Request,
    digest: str | None,
    missing: MetadataMissingError,
) -> tuple[str, str]:
    if request.repo:
        candidates = [request.repo]
    elif digest:
        candidates = [r.key for r in source.repositories_with_manifest(digest)]
    else:
        candidates = [
            r.key for r in source.repositories_with_tag(request.image, request.tag)
        ]
    if len(candidates) != 1:
        raise FallbackUnavailableError(
            f"{missing}; the registry fallback needs one repository but found "
            f"{len(candidates)}, so pass --repo",
            reason=missing.reason,
            digest=missing.digest,
        )
    if digest:
        return candidates[0], digest
    repository = source.repository(candidates[0])
    row = source.tag(repository, request.image, request.tag) if repository else None
    if row is None:
        raise FallbackUnavailableError(
            f"{missing}; tag {request.image}:{request.tag} has no row, so the "
            "registry fallback cannot pin it to a digest; pass --digest",
            reason=missing.reason,
            digest=missing.digest,
        )
    return candidates[0], str(parse_digest(row.manifest_digest, "tag digest"))
