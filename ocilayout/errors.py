"""Errors raised by ocilayout, each tied to the exit code the CLI returns.

    OCILayoutError (exit 1)
    ├── UsageError, ValueError (exit 2): a malformed value supplied by the caller
    ├── NotFoundError, LookupError (exit 3): no such manifest, tag or repository
    │   ├── AmbiguousError: several repositories match; ``candidates``
    │   └── PlatformNotFoundError: no index child for the platform; ``candidates``
    ├── MetadataMissingError (exit 4): the store lacks what a local layout needs,
    │   so a caller may fall back to the registry
    ├── IntegrityError (exit 5): stored content is present but wrong or unsafe
    │   ├── DigestMismatchError
    │   ├── SizeMismatchError
    │   └── UnsafePathError
    ├── NotAnImageError (exit 1): an artifact such as a Helm chart or signature
    ├── UnsupportedManifestError (exit 1): a format such as Docker schema 1
    └── OutputError (exit 1): the output path cannot be written

Every error carries the values it concerns as attributes, so callers never
have to parse the message.
"""

from __future__ import annotations


class OCILayoutError(Exception):
    """Base class of every error ocilayout raises on purpose."""

    exit_code = 1


class UsageError(OCILayoutError, ValueError):
    """A value given by the caller is malformed."""

    exit_code = 2


class NotFoundError(OCILayoutError, LookupError):
    """The requested manifest, tag or repository does not exist in the store."""

    exit_code = 3


class AmbiguousError(NotFoundError):
    """A lookup matched several candidates and the caller must pick one."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class PlatformNotFoundError(NotFoundError):
    """An index has no child for the requested platform; ``candidates`` lists
    the platforms it offers."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class MetadataMissingError(OCILayoutError):
    """The store lacks metadata or content needed for a local layout.

    ``reason`` is a short machine-readable code (for example
    ``no-blob-rows`` or ``manifest-body-missing``) that a scan pipeline
    reports when it falls back to the registry. ``digest`` names what is
    missing; ``manifest`` names the image manifest being resolved when it is
    known, which for an index is the chosen child.
    """

    exit_code = 4

    def __init__(
        self,
        message: str,
        reason: str,
        digest: str | None = None,
        manifest: str | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.digest = digest
        self.manifest = manifest


class IntegrityError(OCILayoutError):
    """Stored content is present but does not match what references it."""

    exit_code = 5


class DigestMismatchError(IntegrityError):
    def __init__(self, expected: str, actual: str, path: str):
        super().__init__(
            f"digest mismatch for {path}: expected {expected}, got {actual}"
        )
        self.expected = expected
        self.actual = actual
        self.path = path


class SizeMismatchError(IntegrityError):
    def __init__(self, digest: str, expected: int, actual: int, path: str):
        super().__init__(
            f"size mismatch for {digest} at {path}: "
            f"expected {expected} bytes, got {actual}"
        )
        self.digest = digest
        self.expected = expected
        self.actual = actual
        self.path = path


class UnsafePathError(IntegrityError):
    """A storage key or blob path would escape the store or is not a regular file."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class InvalidContentError(IntegrityError):
    """A stored manifest or index body is malformed or contradicts its references."""


class NotAnImageError(OCILayoutError):
    """The manifest is an artifact (chart, signature, SBOM), not a container image."""


class UnsupportedManifestError(OCILayoutError):
    """The manifest uses a format ocilayout does not build, such as schema 1."""


class OutputError(OCILayoutError):
    """The output path cannot be created or replaced."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path
