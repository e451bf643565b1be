"""Platform parsing and the choice of one child from an image index."""

from __future__ import annotations

import platform as _platform
import re

from . import mediatypes as mt
from .errors import UsageError
from .manifest import Descriptor, Platform

# Python's machine names mapped to the OCI architecture spelling.
_MACHINE_TO_OCI = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}

_COMPONENT = re.compile(r"^[a-z0-9_.-]+$")

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


def host_platform() -> Platform:
    """Return the running machine's platform in OCI spelling (always linux)."""
    machine = _platform.machine().lower()
    architecture, variant = _MACHINE_TO_OCI.get(machine, (machine, None))
    return Platform(os="linux", architecture=architecture, variant=variant)


def parse_platform(value: str, os_version: str | None = None) -> Platform:
    """Parse ``os/arch[/variant]``, for example ``linux/arm64/v8``."""
    parts = value.split("/")
    if not 2 <= len(parts) <= 3 or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise UsageError(
            f"invalid platform {value!r}: expected os/arch[/variant], "
            "for example linux/amd64 or linux/arm64/v8"
        )
    return Platform(
        os=parts[0],
        architecture=parts[1],
        variant=parts[2] if len(parts) == 3 else None,
        os_version=_check_os_version(os_version),
    )


def _check_os_version(value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
        raise UsageError(
            f"invalid os.version {value!r}: expected dotted numbers such as "
            "10.0.17763.1234"
        )
    return value


def normalize(item: Platform) -> tuple[str, str, str | None]:
    """Return (os, architecture, variant) with the OCI default variants filled."""
    variant = item.variant
    if item.architecture == "arm64" and variant is None:
        variant = "v8"
    elif item.architecture == "arm" and variant is None:
        variant = "v7"
    elif item.architecture == "amd64" and variant == "v1":
        variant = None
    return item.os, item.architecture, variant


def matches(wanted: Platform, offered: Platform) -> bool:
    """Tell whether ``offered`` satisfies a request for ``wanted``.

    Variants compare after normalization, so arm64 equals arm64/v8 and arm
    equals arm/v7. A request without a variant for an architecture that has
    no default variant accepts any variant. An ``os.version`` in the request
    must equal the offered one or be a prefix of it in whole components, so
    ``10.0.17763`` matches ``10.0.17763.1234``.
    """
    want_os, want_arch, want_variant = normalize(wanted)
    have_os, have_arch, have_variant = normalize(offered)
    if (want_os, want_arch) != (have_os, have_arch):
        return False
    if wanted.os_version and not _version_prefix(wanted.os_version, offered.os_version):
        return False
    if wanted.os_features and not set(wanted.os_features) <= set(
        offered.os_features
    ):
        return False
    if want_variant is None and wanted.architecture not in ("arm", "arm64"):
        return True
    return want_variant == have_variant


def _version_prefix(wanted: str, offered: str | None) -> bool:
    if not offered:
        return False
    want = wanted.split(".")
    return offered.split(".")[: len(want)] == want


def is_attestation(child: Descriptor) -> bool:
    """Tell whether an index child is an attestation or otherwise not runnable."""
    if child.annotations.get(ATTESTATION_ANNOTATION) == "attestation-manifest":
        return True
    if child.artifact_type and "in-toto" in child.artifact_type:
        return True
    platform = child.platform
    if platform is not None and "unknown" in (platform.os, platform.architecture):
        return True
    return child.media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES


def describe_platforms(children: list[Descriptor]) -> list[str]:
    return [str(c.platform) if c.platform else "(no platform)" for c in children]
