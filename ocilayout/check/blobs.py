"""Blob files: presence, file type, size and digest, and strays under ``blobs/``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from . import files as fs
from .fields import Findings, Ref, is_algorithm_name, is_blob_name
from .jsonfile import child_path

_HASH_CHUNK = 1 << 20
_UNUSABLE_CODES = {fs.SYMLINK: "blob-symlink", fs.NOT_REGULAR: "blob-not-regular"}


@dataclass
class Blob:
    """One blob file's entry and, once computed, its digest or why it failed."""

    entry: fs.Entry
    hexdigest: str | None = None
    hash_error: str | None = None


class BlobChecker:
    """Verifies blobs against descriptors, hashing each file at most once."""

    def __init__(self, files: fs.LayoutFiles, findings: Findings):
        self.files = files
        self.findings = findings
        self._blobs: dict[tuple[str, str], Blob] = {}

    @property
    def checked(self) -> int:
        """Count the distinct blob files found and examined."""
        return sum(1 for blob in self._blobs.values() if blob.entry.status == fs.OK)

    def verify(self, ref: Ref, absent_ok: bool = False) -> fs.Entry | None:
        """Check a blob's presence, file type, size and digest against ``ref``.

        Returns the blob's entry when it is a readable regular file, even if
        its size or digest is wrong, so its content can still be examined.
        ``absent_ok`` turns a missing blob into a warning, for
        non-distributable layers.
        """
        if ref.key is None:
            return None
        blob = self.blob(ref.key)
        if blob.entry.status != fs.OK:
            self._report_unusable(ref, blob.entry, absent_ok)
            return None

        if ref.size is not None and blob.entry.size != ref.size:
            self.findings.error(
                ref.file,
                child_path(ref.path, "size"),
                "size-mismatch",
                f"descriptor size is {ref.size} but {ref.blob_file} has "
                f"{blob.entry.size} bytes",
            )
        if ref.verifiable:
            self._compare_digest(
                blob, ref.key, ref.file, child_path(ref.path, "digest")
            )
        return blob.entry

    def _report_unusable(self, ref: Ref, entry: fs.Entry, absent_ok: bool) -> None:
        where = child_path(ref.path, "digest")
        if entry.status == fs.MISSING and absent_ok:
            self.findings.warning(
                ref.file,
                where,
                "foreign-layer-absent",
                f"non-distributable layer {ref.digest} is not in the layout; "
                "readers fetch it from its urls",
            )
        elif entry.status == fs.MISSING:
            # NOTE: image-spec lets a layout omit blobs held by an external
            # store, but the scanners this tool serves read only from disk.
            message = f"blob {ref.blob_file} does not exist"
            if entry.detail and not entry.detail.startswith(f"{ref.blob_file} "):
                # The detail names the folder that is missing on the way.
                message += f" ({entry.detail})"
            self.findings.error(ref.file, where, "blob-missing", message)
        else:
            self.findings.error(
                ref.file,
                where,
                _UNUSABLE_CODES.get(entry.status, "blob-unreadable"),
                f"blob {ref.blob_file} cannot be used: {entry.detail}; blobs must "
                "be regular files inside the layout",
            )

    def _compare_digest(
        self, blob: Blob, key: tuple[str, str], file: str, path: str | None
    ) -> None:
        algorithm, encoded = key
        self._hash(blob, key)
        if blob.hash_error is not None:
            self.findings.error(file, path, "blob-unreadable", blob.hash_error)
        elif blob.hexdigest != encoded:
            self.findings.error(
                file,
                path,
                "digest-mismatch",
                f"blobs/{algorithm}/{encoded} hashes to {algorithm}:{blob.hexdigest}, "
                f"not {algorithm}:{encoded}",
            )

    def blob(self, key: tuple[str, str]) -> Blob:
        if key not in self._blobs:
            self._blobs[key] = Blob(self.files.stat(("blobs", *key)))
        return self._blobs[key]

    def _hash(self, blob: Blob, key: tuple[str, str]) -> None:
        if blob.hexdigest is not None or blob.hash_error is not None:
            return
        fd, entry = self.files.open(("blobs", *key))
        if fd is None:
            blob.hash_error = entry.detail
            return
        hasher = hashlib.new(key[0])
        try:
            while chunk := os.read(fd, _HASH_CHUNK):
                hasher.update(chunk)
        except OSError as exc:
            blob.hash_error = f"blobs/{key[0]}/{key[1]} cannot be read: {exc.strerror}"
            return
        finally:
            os.close(fd)
        blob.hexdigest = hasher.hexdigest()

    def scan(self) -> None:
        """Report stray files under ``blobs/`` and check blobs nothing references."""
        for algorithm in self.files.list_dir(("blobs",)) or []:
            file = f"blobs/{fs.shown(algorithm)}"
            entry = self.files.stat(("blobs", algorithm))
            if entry.status == fs.SYMLINK:
                self.findings.error(
                    file,
                    None,
                    "blob-symlink",
                    "a symbolic link; blobs/ must contain real directories",
                )
                continue
            names = self.files.list_dir(("blobs", algorithm))
            if names is None or not is_algorithm_name(algorithm):
                self.findings.error(
                    file,
                    None,
                    "stray-blob",
                    "not a blobs/<algorithm> directory; remove it",
                )
                continue
            for name in names:
                self._scan_blob(algorithm, name)

    def _scan_blob(self, algorithm: str, name: str) -> None:
        key = (algorithm, name)
        file = fs.shown(f"blobs/{algorithm}/{name}")
        if key in self._blobs:
            return
        if not is_blob_name(algorithm, name):
            self.findings.error(
                file,
                None,
                "stray-blob",
                f"the name is not a valid {algorithm} digest; leftovers such as "
                "*.tmp files break the layout, so remove it",
            )
            return
        blob = self.blob(key)
        if blob.entry.status in _UNUSABLE_CODES:
            self.findings.error(
                file,
                None,
                _UNUSABLE_CODES[blob.entry.status],
                f"{blob.entry.detail}; blobs must be regular files",
            )
        elif blob.entry.status != fs.OK:
            self.findings.error(file, None, "blob-unreadable", blob.entry.detail)
        elif algorithm in ("sha256", "sha512"):
            self._compare_digest(blob, key, file, None)
