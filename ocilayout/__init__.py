"""Build verified OCI image layouts from an artifact manager's store.

The library needs only the standard library. Typical use by a scanner::

    from ocilayout import temporary_layout

    with temporary_layout("/srv/store", image="alpine", tag="3.20") as built:
        run_scanner(built.target)   # "oci-dir:/tmp/ocilayout-.../layout"
"""

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
    PlatformNotFoundError,
    SizeMismatchError,
    UnsafePathError,
    UnsupportedManifestError,
    UsageError,
)

# The builder and the validator load on first use, so that a command such as
# ``ocilayout --help`` starts without them.
_LAZY = {
    "BuildResult": "build",
    "build_layout": "build",
    "temporary_layout": "build",
    "CheckReport": "check",
    "check_layout": "check",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "PlatformNotFoundError",
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
