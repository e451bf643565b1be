"""Build verified OCI image layouts from an artifact manager's store.

The library needs only the standard library. Typical use by a scanner::

    from ocilayout import temporary_layout

    with temporary_layout("/srv/store", image="alpine", tag="3.20") as built:
        run_scanner(built.target)   # "oci-dir:/tmp/ocilayout-.../layout"
"""

from .build import BuildResult, build_layout, temporary_layout
from .check import CheckReport, check_layout
from .digest import Digest, parse_digest
from .errors import (
    AmbiguousError,
    DigestMismatchError,
    IntegrityError,
    MetadataMissingError,
    NotAnImageError,
    NotFoundError,
    OCILayoutError,
    OutputError,
    SizeMismatchError,
    UnsafePathError,
    UnsupportedManifestError,
    UsageError,
)

__all__ = [
    "AmbiguousError",
    "BuildResult",
    "CheckReport",
    "Digest",
    "DigestMismatchError",
    "IntegrityError",
    "MetadataMissingError",
    "NotAnImageError",
    "NotFoundError",
    "OCILayoutError",
    "OutputError",
    "SizeMismatchError",
    "UnsafePathError",
    "UnsupportedManifestError",
    "UsageError",
    "build_layout",
    "check_layout",
    "parse_digest",
    "temporary_layout",
]

__version__ = "0.1.0"
