"""Content digests: parsing, formatting and the one hashing helper."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import UsageError

# Algorithms ocilayout can verify, with the exact length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}

_GENERIC = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_LOWER_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated ``algorithm:hex`` digest of a supported algorithm."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(value: object, what: str = "digest") -> Digest:
    """Parse ``value`` into a Digest, or raise UsageError naming the value.

    Only sha256 and sha512 are accepted, in lowercase hex of the exact length,
    because every other form either cannot be verified or is invalid under
    the OCI image specification.
    """
    if not isinstance(value, str):
        raise UsageError(f"invalid {what} {value!r}: expected a string")
    shown = repr(value) if len(value) <= 200 else repr(value[:200] + "...")
    if not _GENERIC.fullmatch(value):
        raise UsageError(
            f"invalid {what} {shown}: expected the form sha256:<64 lowercase hex>"
        )
    algorithm, encoded = value.split(":", 1)
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise UsageError(
            f"unsupported digest algorithm {algorithm!r} in {what} {shown}: "
            f"use sha256 or sha512"
        )
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        raise UsageError(
            f"invalid {what} {shown}: {algorithm} needs exactly {length} "
            f"lowercase hex characters"
        )
    return Digest(algorithm, encoded)
