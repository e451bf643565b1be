"""Write the spec-fixtures corpus: one small OCI image layout per case.

Run ``python spec-fixtures/generate.py`` from the repository root to
rewrite every case folder under ``spec-fixtures/``; pass ``--out DIR`` to
write elsewhere. Output is deterministic (fixed tar metadata, gzip mtime 0),
so rerunning it over the committed corpus changes nothing. Each case folder
contains ``layout/`` (the OCI layout), ``expected.json`` (the verdict, every
expected problem with its file and JSON path, and what skopeo, umoci and
syft do with it) and ``README.md``.

Cases declare their expected problems by hand; nothing here runs the
checker, so the corpus is an independent statement of the rules.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"
EMPTY_JSON = b"{}"

ACCEPT = "accept"
REJECT = "reject"
CONSUMERS = ("skopeo", "umoci", "syft")


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def make_tar(files: dict[str, bytes]) -> bytes:
    """Return a ustar archive of ``files`` with fixed owner, mode and mtime."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


@dataclass
class Blob:
    algorithm: str
    encoded: str
    size: int

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def file(self) -> str:
        return f"blobs/{self.algorithm}/{self.encoded}"


@dataclass
class Image:
    """One image written by ``Layout.image``: its manifest, config and layers."""

    manifest: Blob
    manifest_body: dict
    media_type: str
    config: Blob
    layers: list[Blob]
    architecture: str

    @property
    def file(self) -> str:
        return self.manifest.file

    def entry(self, ref: str | None = "latest", platform: bool = True, **extra) -> dict:
        """Return a descriptor of this image for an index's ``manifests``."""
        descriptor = {
            "mediaType": self.media_type,
            "digest": self.manifest.digest,
            "size": self.manifest.size,
        }
        if platform:
            descriptor["platform"] = {"architecture": self.architecture, "os": "linux"}
        if ref is not None:
            descriptor["annotations"] = {REF_NAME: ref}
        descriptor.update(extra)
        return descriptor


@dataclass
class Layout:
    """A layout being written, and the problems its case expects."""

    root: Path
    expected: list[dict] = field(default_factory=list)

    def write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def blob(self, data: bytes, algorithm: str = "sha256") -> Blob:
        encoded = hashlib.new(algorithm, data).hexdigest()
        blob = Blob(algorithm, encoded, len(data))
        self.write(blob.file, data)
        return blob

    def oci_layout(self, content: bytes = b'{"imageLayoutVersion":"1.0.0"}') -> None:
        self.write("oci-layout", content)

    def index(self, manifests: list, **extra) -> None:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        body.update(extra)
        self.write("index.json", dumps(body))

    def nested_index(self, manifests: list, algorithm: str = "sha256", **extra) -> Blob:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        body.update(extra)
        return self.blob(dumps(body), algorithm)

    def layer(
        self,
        files: dict[str, bytes] | None = None,
        compression: str = "gzip",
        algorithm: str = "sha256",
    ) -> tuple[Blob, str]:
        """Write a layer blob and return it with its diff_id."""
        tar = make_tar(files or {"hello.txt": b"hello from spec-fixtures\n"})
        blob = self.blob(compress(tar, compression), algorithm)
        return blob, f"{algorithm}:{hashlib.new(algorithm, tar).hexdigest()}"

    def image(
        self,
        architecture: str = "amd64",
        layers: list[tuple[Blob, str, str]] | None = None,
        algorithm: str = "sha256",
        docker: bool = False,
        edit_config: Callable[[dict], None] | None = None,
        edit_manifest: Callable[[dict], None] | None = None,
    ) -> Image:
        """Write an image (config, layers, manifest); ``layers`` lists
        ``(blob, diff_id, media_type)`` and defaults to one gzip layer."""
        if layers is None:
            blob, diff_id = self.layer(
                {f"{architecture}.txt": f"{architecture}\n".encode()},
                algorithm=algorithm,
            )
            layers = [(blob, diff_id, DOCKER_GZIP if docker else OCI_GZIP)]

        config_body = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d, _ in layers]},
        }
        if edit_config:
            edit_config(config_body)
        config = self.blob(dumps(config_body), algorithm)

        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        body = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
            "layers": [descriptor(m, b) for b, _, m in layers],
        }
        if edit_manifest:
            edit_manifest(body)
        manifest = self.blob(dumps(body), algorithm)
        blobs = [b for b, _, _ in layers]
        return Image(manifest, body, media_type, config, blobs, architecture)

    def expect(
        self,
        severity: str,
        code: str,
        file: str,
        json_path: str | None,
        deep: bool = False,
    ) -> None:
        """Declare a problem the check must report; ``deep`` ones only with deep."""
        self.expected.append(
            {
                "severity": severity,
                "code": code,
                "file": file,
                "json_path": json_path,
                "deep_only": deep,
            }
        )

    def error(self, code: str, file: str, json_path: str | None, deep=False) -> None:
        self.expect("error", code, file, json_path, deep)

    def warning(self, code: str, file: str, json_path: str | None, deep=False) -> None:
        self.expect("warning", code, file, json_path, deep)


def descriptor(media_type: str, blob: Blob, **extra) -> dict:
    value = {"mediaType": media_type, "digest": blob.digest, "size": blob.size}
    value.update(extra)
    return value


def simple(layout: Layout, **image_options) -> Image:
    """Write oci-layout and one image addressed as ``latest``."""
    layout.oci_layout()
    image = layout.image(**image_options)
    layout.index([image.entry()])
    return image


@dataclass
class Case:
    """One corpus case: how to build it and what consumers are expected to do.

    ``consumers`` maps skopeo, umoci and syft to ``accept``, ``reject`` or
    None (not judged, with the reason in ``note``). ``compatibility`` is the
    checker's expected readable/unreadable prediction per consumer when the
    layout has no errors. ``note`` explains any disagreement between the
    checker and a consumer.
    """

    name: str
    summary: str
    build: Callable[[Layout], None]
    consumers: dict[str, str | None]
    compatibility: dict[str, bool] | None = None
    ref: str | None = "latest"
    note: str = ""


CASES: list[Case] = []

ALL_ACCEPT = {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT}
ALL_REJECT = {"skopeo": REJECT, "umoci": REJECT, "syft": REJECT}
ALL_READABLE = {"syft": True, "skopeo": True, "umoci": True}


def case(name: str, summary: str, consumers: dict, **options):
    """Register the decorated build function as a corpus case."""

    def register(build: Callable[[Layout], None]) -> Callable[[Layout], None]:
        CASES.append(Case(name, summary, build, dict(consumers), **options))
        return build

    return register


# Valid layouts


@case(
    "valid-image",
    "one OCI image manifest with platform and ref name",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    simple(layout)


@case(
    "valid-no-platform",
    "an index.json entry without platform, as skopeo and umoci write them",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry(platform=False)])
    layout.warning("platform-missing", "index.json", "$.manifests[0]")


@case(
    "valid-no-ref-name",
    "one image without a ref name: addressable only as the sole image",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    compatibility={"syft": True, "skopeo": True, "umoci": False},
    ref=None,
    note=("umoci addresses images only by ref name and finds no latest."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry(ref=None)])


@case(
    "valid-multi-platform",
    "index.json points at a nested OCI index of amd64 and arm64 images",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": False},
    note=(
        "syft reads an oci-dir only when index.json holds one image "
        "manifest; umoci finds two manifests under latest and reports the "
        "tag as ambiguous."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    amd64 = layout.image("amd64")
    arm64 = layout.image("arm64")
    nested = layout.nested_index([amd64.entry(ref=None), arm64.entry(ref=None)])
    layout.index([descriptor(OCI_INDEX, nested, annotations={REF_NAME: "latest"})])


@case(
    "valid-two-refs",
    "two images with distinct ref names",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": True},
    note=("syft reads an oci-dir only when index.json holds exactly one descriptor."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    first = layout.image("amd64")
    second = layout.image("arm64")
    layout.index([first.entry("latest"), second.entry("v2")])


@case(
    "valid-docker-v2",
    "a Docker v2 manifest in index.json: valid, but skopeo and umoci read only OCI types there",
    {"skopeo": REJECT, "umoci": REJECT, "syft": ACCEPT},
    compatibility={"syft": True, "skopeo": False, "umoci": False},
    note=("skopeo 1.9.3 and umoci 0.4.7 read only OCI media types in index.json."),
)
def _(layout: Layout) -> None:
    simple(layout, docker=True)


@case(
    "valid-sha512",
    "every blob, manifest included, is addressed by sha512",
    {"skopeo": REJECT, "umoci": REJECT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": False, "umoci": False},
    note=(
        "sha512 is a registered algorithm, so the layout is valid, but "
        "skopeo 1.9.3 compares the config with a sha256 digest, umoci 0.4.7 "
        "reports an unsupported algorithm and syft 1.18.1 an unsupported "
        "hash."
    ),
)
def _(layout: Layout) -> None:
    simple(layout, algorithm="sha512")


@case(
    "valid-zstd-layer",
    "a zstd-compressed layer whose diff_id a deep check verifies",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    compatibility={"syft": True, "skopeo": True, "umoci": False},
    note=("umoci 0.4.7 cannot unpack zstd layers."),
)
def _(layout: Layout) -> None:
    blob, diff_id = layout.layer(compression="zstd")
    simple(layout, layers=[(blob, diff_id, OCI_ZSTD)])


@case(
    "valid-uncompressed-layer",
    "a plain tar layer",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    blob, diff_id = layout.layer(compression="tar")
    simple(layout, layers=[(blob, diff_id, OCI_TAR)])


def _write_artifact(layout: Layout, subject: dict | None = None, **extra) -> Blob:
    empty = layout.blob(EMPTY_JSON)
    payload = layout.blob(b"signature payload\n")
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": descriptor(OCI_EMPTY, empty),
        "layers": [descriptor("text/plain", payload)],
    }
    if subject is not None:
        body["subject"] = subject
    body.update(extra)
    return layout.blob(dumps(body))


@case(
    "valid-artifact",
    "an artifact manifest with the empty config and an artifactType",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": False},
    note=(
        "skopeo copies any manifest; umoci unpacks only OCI image configs "
        "and syft rejects the text/plain layer."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    artifact = _write_artifact(layout)
    layout.index([descriptor(OCI_MANIFEST, artifact, annotations={REF_NAME: "latest"})])


@case(
    "valid-referrer",
    "an image and a signature whose subject is that image, each with a ref name",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": True},
    note=("syft reads an oci-dir only when index.json holds exactly one descriptor."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    subject = descriptor(OCI_MANIFEST, image.manifest)
    signature = _write_artifact(layout, subject=subject)
    layout.index(
        [
            image.entry("latest"),
            descriptor(
                OCI_MANIFEST,
                signature,
                artifactType="application/vnd.example.signature.v1",
                annotations={REF_NAME: "latest.sig"},
            ),
        ]
    )


@case(
    "valid-subject-absent",
    "an artifact whose subject manifest is not in the layout",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": False},
    note=(
        "skopeo copies any manifest; umoci unpacks only OCI image configs "
        "and syft rejects the text/plain layer."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    elsewhere = Blob("sha256", hashlib.sha256(b"held elsewhere").hexdigest(), 14)
    artifact = _write_artifact(layout, subject=descriptor(OCI_MANIFEST, elsewhere))
    layout.index([descriptor(OCI_MANIFEST, artifact, annotations={REF_NAME: "latest"})])
    layout.warning("subject-absent", artifact.file, "$.subject")


@case(
    "valid-data-field",
    "a config descriptor that embeds the config as base64 data",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    def embed(body: dict) -> None:
        config = layout.root / "blobs" / "sha256" / body["config"]["digest"][7:]
        body["config"]["data"] = base64.b64encode(config.read_bytes()).decode()

    simple(layout, edit_manifest=embed)


@case(
    "valid-foreign-layer-absent",
    "a non-distributable layer with urls, absent from the layout as allowed",
    {"skopeo": None, "umoci": None, "syft": None},
    compatibility=ALL_READABLE,
    note="Not run through consumers: they could try to fetch the layer's URL.",
)
def _(layout: Layout) -> None:
    tar = make_tar({"foreign.txt": b"foreign\n"})
    data = compress(tar, "gzip")
    foreign = Blob("sha256", hashlib.sha256(data).hexdigest(), len(data))
    diff_id = f"sha256:{hashlib.sha256(tar).hexdigest()}"

    def add_urls(body: dict) -> None:
        body["layers"][0]["urls"] = ["https://example.invalid/foreign.tar.gz"]

    image = simple(
        layout,
        layers=[(foreign, diff_id, OCI_NONDIST_GZIP)],
        edit_manifest=add_urls,
    )
    layout.warning("foreign-layer-absent", image.file, "$.layers[0].digest")


@case(
    "valid-no-layers",
    "an image manifest with an empty layers array",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    image = simple(layout, layers=[])
    layout.warning("layers-empty", image.file, "$.layers")


@case(
    "valid-unreferenced-blob",
    "a verified blob that nothing references, which the spec allows",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    simple(layout)
    layout.blob(b"left over from an earlier image\n")


@case(
    "valid-index-no-media-type",
    "index.json without its own mediaType (a SHOULD)",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.write(
        "index.json", dumps({"schemaVersion": 2, "manifests": [image.entry()]})
    )
    layout.warning("media-type-missing", "index.json", "$")


@case(
    "valid-nested-ref-name",
    "a ref name on a nested index's child, where readers ignore it",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": True},
    note=("syft rejects an index in index.json."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    nested = layout.nested_index([image.entry(ref="inner")])
    layout.index([descriptor(OCI_INDEX, nested, annotations={REF_NAME: "latest"})])
    layout.warning(
        "ref-name-misplaced",
        nested.file,
        '$.manifests[0].annotations["org.opencontainers.image.ref.name"]',
    )


@case(
    "valid-platform-mismatch",
    "an index.json platform that disagrees with the image config",
    ALL_ACCEPT,
    compatibility=ALL_READABLE,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image("amd64")
    entry = image.entry()
    entry["platform"]["architecture"] = "arm64"
    layout.index([entry])
    layout.warning("platform-mismatch", "index.json", "$.manifests[0].platform")


@case(
    "valid-unknown-entry-type",
    "an index.json entry of an unknown media type beside an image",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": True, "umoci": True},
    note=("syft reads an oci-dir only when index.json holds exactly one descriptor."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    other = layout.blob(b'{"kind":"example"}')
    layout.index(
        [
            image.entry("latest"),
            descriptor(
                "application/vnd.example.thing.v1+json",
                other,
                annotations={REF_NAME: "thing"},
            ),
        ]
    )
    layout.warning("media-type-unknown", "index.json", "$.manifests[1].mediaType")


@case(
    "valid-unregistered-algorithm",
    "an artifact layer addressed by the unregistered sha256+b64u digest",
    {"skopeo": REJECT, "umoci": REJECT, "syft": REJECT},
    compatibility={"syft": False, "skopeo": False, "umoci": False},
    note=(
        "The spec says digests with unrecognized algorithms should pass "
        "validation, so the checker only warns; Go readers (go-digest) reject "
        "an unknown algorithm."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    payload = b"unregistered algorithm payload\n"
    raw = hashlib.sha256(payload).digest()
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    layout.write(f"blobs/sha256+b64u/{encoded}", payload)
    layer = {
        "mediaType": "text/plain",
        "digest": f"sha256+b64u:{encoded}",
        "size": len(payload),
    }
    empty = layout.blob(EMPTY_JSON)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note.v1",
        "config": descriptor(OCI_EMPTY, empty),
        "layers": [layer],
    }
    manifest = layout.blob(dumps(body))
    layout.index([descriptor(OCI_MANIFEST, manifest, annotations={REF_NAME: "latest"})])
    layout.warning("digest-algorithm-unsupported", manifest.file, "$.layers[0].digest")


# Layout files


@case(
    "oci-layout-missing",
    "no oci-layout file",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=("skopeo and syft do not read oci-layout; umoci does."),
)
def _(layout: Layout) -> None:
    image = layout.image()
    layout.index([image.entry()])
    layout.error("oci-layout-missing", "oci-layout", None)


@case(
    "oci-layout-wrong-version",
    'oci-layout says imageLayoutVersion "2.0.0"',
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=("skopeo and syft do not read oci-layout; umoci does."),
)
def _(layout: Layout) -> None:
    simple(layout)
    layout.oci_layout(b'{"imageLayoutVersion":"2.0.0"}')
    layout.error("oci-layout-invalid", "oci-layout", "$.imageLayoutVersion")


@case(
    "oci-layout-not-json",
    "oci-layout is not JSON",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=("skopeo and syft do not read oci-layout; umoci does."),
)
def _(layout: Layout) -> None:
    simple(layout)
    layout.oci_layout(b"imageLayoutVersion=1.0.0\n")
    layout.error("json-invalid", "oci-layout", None)


@case(
    "index-missing",
    "no index.json",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    layout.image()
    layout.error("index-missing", "index.json", None)


@case(
    "index-not-json",
    "index.json is cut off mid-document",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    image = simple(layout)
    layout.write(
        "index.json", dumps({"schemaVersion": 2, "manifests": [image.entry()]})[:40]
    )
    layout.error("json-invalid", "index.json", None)


@case(
    "index-not-object",
    "index.json holds a JSON array",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    image = simple(layout)
    layout.write("index.json", dumps([image.entry()]))
    layout.error("json-invalid", "index.json", "$")


@case(
    "index-deeply-nested",
    "index.json nests 100,000 arrays to exhaust a recursive parser",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    simple(layout)
    layout.write("index.json", b"[" * 100_000 + b"]" * 100_000)
    layout.error("json-invalid", "index.json", None)


@case(
    "index-duplicate-key",
    "index.json repeats the manifests key, so readers may see different images",
    ALL_ACCEPT,
    note=(
        "Go's encoding/json keeps the last of repeated keys, so skopeo, umoci "
        "and syft read the second manifests array without complaint."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    decoy = layout.image("arm64")
    image = layout.image("amd64")
    first = json.dumps([decoy.entry()])
    second = json.dumps([image.entry()])
    text = f'{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":{first},"manifests":{second}}}'
    layout.write("index.json", text.encode())
    layout.error("json-duplicate-key", "index.json", "$")


@case(
    "index-schema-version",
    "index.json has schemaVersion 1",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note=("None of the consumers checks the schemaVersion of index.json."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry()], schemaVersion=1)
    layout.error("schema-version-invalid", "index.json", "$.schemaVersion")


@case(
    "index-docker-media-type",
    "index.json declares the Docker manifest list media type",
    ALL_ACCEPT,
    note="The consumers do not read index.json's own mediaType.",
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index(
        [image.entry()],
        mediaType="application/vnd.docker.distribution.manifest.list.v2+json",
    )
    layout.error("media-type-mismatch", "index.json", "$.mediaType")


@case(
    "index-manifests-not-array",
    "index.json manifests is an object",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index(image.entry())
    layout.error("field-invalid", "index.json", "$.manifests")


@case(
    "index-symlink",
    "index.json is a symbolic link to a file inside the layout",
    ALL_ACCEPT,
    note="The consumers follow the symbolic link.",
)
def _(layout: Layout) -> None:
    simple(layout)
    (layout.root / "index.json").rename(layout.root / "real-index.json")
    os.symlink("real-index.json", layout.root / "index.json")
    layout.error("file-not-regular", "index.json", None)


@case(
    "blobs-missing",
    "no blobs directory at all",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    simple(layout)
    shutil.rmtree(layout.root / "blobs")
    layout.error("blobs-missing", "blobs", None)
    layout.error("blob-missing", "index.json", "$.manifests[0].digest")


# Descriptors


@case(
    "blob-missing-layer",
    "the layer blob is absent",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    image = simple(layout)
    (layout.root / image.layers[0].file).unlink()
    layout.error("blob-missing", image.file, "$.layers[0].digest")


@case(
    "size-mismatch",
    "index.json gives the manifest a size one byte too large",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=("skopeo and syft do not compare the manifest's declared size; umoci does."),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry(size=image.manifest.size + 1)])
    layout.error("size-mismatch", "index.json", "$.manifests[0].size")


@case(
    "size-negative",
    "a layer descriptor with size -1",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note=("None of the consumers rejects a negative layer size."),
)
def _(layout: Layout) -> None:
    def negative(body: dict) -> None:
        body["layers"][0]["size"] = -1

    image = simple(layout, edit_manifest=negative)
    layout.error("size-invalid", image.file, "$.layers[0].size")


@case(
    "size-not-integer",
    'a config descriptor with size "123" as a string',
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def stringly(body: dict) -> None:
        body["config"]["size"] = str(body["config"]["size"])

    image = simple(layout, edit_manifest=stringly)
    layout.error("size-invalid", image.file, "$.config.size")


@case(
    "digest-mismatch-layer",
    "a layer blob altered after its digest was taken, same size",
    {"skopeo": REJECT, "umoci": REJECT, "syft": REJECT},
)
def _(layout: Layout) -> None:
    image = simple(layout)
    path = layout.root / image.layers[0].file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    layout.error("digest-mismatch", image.file, "$.layers[0].digest")
    layout.error("layer-corrupt", image.file, "$.layers[0].digest", deep=True)


@case(
    "digest-uppercase",
    "index.json names the manifest with uppercase hex",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    entry = image.entry()
    entry["digest"] = "sha256:" + image.manifest.encoded.upper()
    layout.index([entry])
    layout.error("digest-invalid", "index.json", "$.manifests[0].digest")


@case(
    "digest-wrong-length",
    "a config digest with 63 hex characters",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def shorten(body: dict) -> None:
        body["config"]["digest"] = body["config"]["digest"][:-1]

    image = simple(layout, edit_manifest=shorten)
    layout.error("digest-invalid", image.file, "$.config.digest")


@case(
    "digest-no-algorithm",
    "a layer digest without the algorithm prefix",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def strip(body: dict) -> None:
        body["layers"][0]["digest"] = body["layers"][0]["digest"][7:]

    image = simple(layout, edit_manifest=strip)
    layout.error("digest-invalid", image.file, "$.layers[0].digest")


@case(
    "media-type-invalid",
    'a layer media type "tar gzip", which is not type/subtype',
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=("skopeo copies a layer of any media type string."),
)
def _(layout: Layout) -> None:
    def bad(body: dict) -> None:
        body["layers"][0]["mediaType"] = "tar gzip"

    image = simple(layout, edit_manifest=bad)
    layout.error("media-type-invalid", image.file, "$.layers[0].mediaType")


@case(
    "media-type-missing",
    "an index.json descriptor without mediaType",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    entry = image.entry()
    del entry["mediaType"]
    layout.index([entry])
    layout.error("field-missing", "index.json", "$.manifests[0]")


@case(
    "annotations-not-strings",
    "a manifest annotation with a number value",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def number(body: dict) -> None:
        body["annotations"] = {"org.example.build": 7}

    image = simple(layout, edit_manifest=number)
    layout.error("field-invalid", image.file, '$.annotations["org.example.build"]')


@case(
    "urls-invalid",
    "a layer whose urls field is a string instead of an array",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def urls(body: dict) -> None:
        body["layers"][0]["urls"] = "https://example.invalid/layer"

    image = simple(layout, edit_manifest=urls)
    layout.error("field-invalid", image.file, "$.layers[0].urls")


@case(
    "data-not-base64",
    "a config descriptor whose data is not base64",
    {"skopeo": REJECT, "umoci": REJECT, "syft": REJECT},
)
def _(layout: Layout) -> None:
    def bad(body: dict) -> None:
        body["config"]["data"] = "not*base64!"

    image = simple(layout, edit_manifest=bad)
    layout.error("data-invalid", image.file, "$.config.data")


@case(
    "data-mismatch",
    "a config descriptor whose base64 data is other bytes than the config",
    ALL_ACCEPT,
    note="None of the consumers reads the data field; they read the config blob.",
)
def _(layout: Layout) -> None:
    def other(body: dict) -> None:
        body["config"]["data"] = base64.b64encode(b"something else").decode()

    image = simple(layout, edit_manifest=other)
    layout.error("data-mismatch", image.file, "$.config.data")
    layout.error("data-mismatch", image.file, "$.config.data")


@case(
    "empty-descriptor-wrong-size",
    "an artifact whose empty config descriptor says size 3",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    empty = layout.blob(EMPTY_JSON)
    payload = layout.blob(b"payload\n")
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note.v1",
        "config": {"mediaType": OCI_EMPTY, "digest": empty.digest, "size": 3},
        "layers": [descriptor("text/plain", payload)],
    }
    manifest = layout.blob(dumps(body))
    layout.index([descriptor(OCI_MANIFEST, manifest, annotations={REF_NAME: "latest"})])
    layout.error("empty-descriptor-invalid", manifest.file, "$.config.size")
    layout.error("size-mismatch", manifest.file, "$.config.size")


@case(
    "empty-descriptor-wrong-digest",
    'an artifact whose empty config descriptor points at "{ }" instead of "{}"',
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=(
        "skopeo copies the artifact without checking the empty descriptor; "
        "umoci and syft reject any artifact."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    spaced = layout.blob(b"{ }")
    payload = layout.blob(b"payload\n")
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note.v1",
        "config": descriptor(OCI_EMPTY, spaced),
        "layers": [descriptor("text/plain", payload)],
    }
    manifest = layout.blob(dumps(body))
    layout.index([descriptor(OCI_MANIFEST, manifest, annotations={REF_NAME: "latest"})])
    layout.error("empty-descriptor-invalid", manifest.file, "$.config.digest")
    layout.error("empty-descriptor-invalid", manifest.file, "$.config.size")


@case(
    "artifact-type-invalid",
    'an artifact whose artifactType "signature" is not type/subtype',
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=(
        "skopeo copies the artifact without checking artifactType; umoci and "
        "syft reject any artifact."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    artifact = _write_artifact(layout, artifactType="signature")
    layout.index([descriptor(OCI_MANIFEST, artifact, annotations={REF_NAME: "latest"})])
    layout.error("media-type-invalid", artifact.file, "$.artifactType")


# Blob files


@case(
    "blob-symlink-inside",
    "the config blob is a symbolic link to a copy inside the layout",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note=(
        "skopeo, umoci and syft 1.18.1 all follow the link. The checker "
        "rejects it because a reader that follows blob links can be led to "
        "any file on the machine."
    ),
)
def _(layout: Layout) -> None:
    image = simple(layout)
    path = layout.root / image.config.file
    (layout.root / "config-copy.json").write_bytes(path.read_bytes())
    path.unlink()
    os.symlink("../../config-copy.json", path)
    layout.error("blob-symlink", image.file, "$.config.digest")


@case(
    "blob-symlink-outside",
    "a layer blob is a symbolic link to a file outside the layout",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note=(
        "The link leads to outside.tar.gz beside layout/, which holds the "
        "right bytes; skopeo, umoci and syft 1.18.1 all follow it out of "
        "the layout."
    ),
)
def _(layout: Layout) -> None:
    image = simple(layout)
    path = layout.root / image.layers[0].file
    (layout.root.parent / "outside.tar.gz").write_bytes(path.read_bytes())
    path.unlink()
    os.symlink("../../../outside.tar.gz", path)
    layout.error("blob-symlink", image.file, "$.layers[0].digest")


@case(
    "blob-directory",
    "a layer blob path is a directory",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    image = simple(layout)
    path = layout.root / image.layers[0].file
    path.unlink()
    path.mkdir()
    (path / "content").write_bytes(b"not a blob\n")
    layout.error("blob-not-regular", image.file, "$.layers[0].digest")


@case(
    "blobs-algorithm-symlink",
    "blobs/sha256 is a symbolic link to a directory inside the layout",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note="All three consumers follow a symlinked blobs/sha256 directory.",
)
def _(layout: Layout) -> None:
    simple(layout)
    (layout.root / "blobs" / "sha256").rename(layout.root / "store")
    os.symlink("../store", layout.root / "blobs" / "sha256")
    layout.error("blob-symlink", "blobs/sha256", None)
    layout.error("blob-symlink", "index.json", "$.manifests[0].digest")


@case(
    "stray-tmp-blob",
    "a leftover blobs/sha256/<hex>.tmp file beside the blobs",
    ALL_ACCEPT,
    note="The consumers ignore files they are not asked to read.",
)
def _(layout: Layout) -> None:
    image = simple(layout)
    name = f"{image.layers[0].file}.tmp"
    layout.write(name, b"partial")
    layout.error("stray-blob", name, None)


@case(
    "stray-file-in-blobs",
    "a README file directly under blobs/",
    ALL_ACCEPT,
    note="The consumers ignore files they are not asked to read.",
)
def _(layout: Layout) -> None:
    simple(layout)
    layout.write("blobs/README", b"not a blob directory\n")
    layout.error("stray-blob", "blobs/README", None)


@case(
    "unreferenced-blob-corrupt",
    "a blob nothing references, whose content does not match its name",
    ALL_ACCEPT,
    note="The consumers never read a blob that no descriptor references.",
)
def _(layout: Layout) -> None:
    simple(layout)
    name = "blobs/sha256/" + hashlib.sha256(b"original").hexdigest()
    layout.write(name, b"tampered")
    layout.error("digest-mismatch", name, None)


# Manifests, indexes and configs


@case(
    "ambiguous-manifest",
    "an image manifest that also carries a manifests array",
    {"skopeo": REJECT, "umoci": ACCEPT, "syft": ACCEPT},
    note=(
        "skopeo 1.9.3 rejects the ambiguous body itself; umoci and syft "
        "read it as the manifest it claims to be."
    ),
)
def _(layout: Layout) -> None:
    def both(body: dict) -> None:
        body["manifests"] = []

    image = simple(layout, edit_manifest=both)
    layout.error("ambiguous-manifest", image.file, "$.manifests")


@case(
    "ambiguous-index",
    "a nested index that also carries config and layers",
    {"skopeo": REJECT, "umoci": ACCEPT, "syft": REJECT},
    note=(
        "skopeo 1.9.3 rejects the ambiguous body itself; umoci reads it as "
        "the index it claims to be and ignores config and layers."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    nested = layout.nested_index(
        [image.entry(ref=None)],
        config=image.manifest_body["config"],
        layers=image.manifest_body["layers"],
    )
    layout.index([descriptor(OCI_INDEX, nested, annotations={REF_NAME: "latest"})])
    layout.error("ambiguous-index", nested.file, "$.config")
    layout.error("ambiguous-index", nested.file, "$.layers")


@case(
    "media-type-mismatch",
    "index.json calls a blob a manifest whose body declares an index",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    nested = layout.nested_index([image.entry(ref=None)])
    layout.index([descriptor(OCI_MANIFEST, nested, annotations={REF_NAME: "latest"})])
    layout.error("media-type-mismatch", nested.file, "$.mediaType")
    layout.error("field-missing", nested.file, "$")
    layout.error("field-missing", nested.file, "$")
    layout.error("ambiguous-manifest", nested.file, "$.manifests")


@case(
    "manifest-schema-version",
    "an image manifest with schemaVersion 1",
    {"skopeo": ACCEPT, "umoci": ACCEPT, "syft": ACCEPT},
    note=("None of the consumers checks the schemaVersion of an image manifest."),
)
def _(layout: Layout) -> None:
    def old(body: dict) -> None:
        body["schemaVersion"] = 1

    image = simple(layout, edit_manifest=old)
    layout.error("schema-version-invalid", image.file, "$.schemaVersion")


@case(
    "manifest-no-config",
    "an image manifest without a config descriptor",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=("skopeo copies the manifest and its layers without a config."),
)
def _(layout: Layout) -> None:
    def drop(body: dict) -> None:
        del body["config"]

    image = simple(layout, edit_manifest=drop)
    layout.error("field-missing", image.file, "$")


@case(
    "manifest-not-json",
    "the manifest blob is not JSON, though its digest is right",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    manifest = layout.blob(b"\x89PNG not a manifest")
    layout.index([descriptor(OCI_MANIFEST, manifest, annotations={REF_NAME: "latest"})])
    layout.error("json-invalid", manifest.file, None)


@case(
    "manifest-too-large",
    "index.json declares a 5 MiB manifest, beyond the 4 MiB read limit",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=(
        "The manifest itself is small and only its declared size is wrong: "
        "skopeo and syft do not compare it, umoci does."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry(size=5 * 1024 * 1024)])
    layout.error("json-too-large", "index.json", "$.manifests[0].size")
    layout.error("size-mismatch", "index.json", "$.manifests[0].size")


@case(
    "artifact-type-missing",
    "an artifact with the empty config and no artifactType",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=(
        "skopeo copies the artifact without checking artifactType; umoci "
        "and syft reject any artifact."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    empty = layout.blob(EMPTY_JSON)
    payload = layout.blob(b"payload\n")
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, empty),
        "layers": [descriptor("text/plain", payload)],
    }
    manifest = layout.blob(dumps(body))
    layout.index([descriptor(OCI_MANIFEST, manifest, annotations={REF_NAME: "latest"})])
    layout.error("artifact-type-missing", manifest.file, "$")


@case(
    "config-missing-os",
    "an image config without os",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=(
        "skopeo and syft do not require os in the config; umoci needs it to "
        "write config.json."
    ),
)
def _(layout: Layout) -> None:
    def drop(body: dict) -> None:
        del body["os"]

    image = simple(layout, edit_config=drop)
    layout.error("field-missing", image.config.file, "$")


@case(
    "config-rootfs-type",
    'an image config whose rootfs.type is "layer"',
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=("skopeo and syft do not check rootfs.type; umoci does."),
)
def _(layout: Layout) -> None:
    def wrong(body: dict) -> None:
        body["rootfs"]["type"] = "layer"

    image = simple(layout, edit_config=wrong)
    layout.error("field-invalid", image.config.file, "$.rootfs.type")


@case(
    "config-diff-ids-count",
    "two layers but one diff_id",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    note=(
        "skopeo and syft do not compare the number of diff_ids with the "
        "layers; umoci does."
    ),
)
def _(layout: Layout) -> None:
    first, first_id = layout.layer({"a.txt": b"a\n"})
    second, second_id = layout.layer({"b.txt": b"b\n"})
    del second_id

    def one(body: dict) -> None:
        body["rootfs"]["diff_ids"] = [first_id]

    image = simple(
        layout,
        layers=[(first, first_id, OCI_GZIP), (second, first_id, OCI_GZIP)],
        edit_config=one,
    )
    layout.error("diff-ids-count", image.config.file, "$.rootfs.diff_ids")


@case(
    "config-diff-id-invalid",
    "an image config diff_id that is not a digest",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=("skopeo copies the config without parsing its diff_ids."),
)
def _(layout: Layout) -> None:
    def bad(body: dict) -> None:
        body["rootfs"]["diff_ids"] = ["sha256:not-hex"]

    image = simple(layout, edit_config=bad)
    layout.error("digest-invalid", image.config.file, "$.rootfs.diff_ids[0]")


@case(
    "config-duplicate-key",
    "an image config that repeats the architecture key",
    ALL_ACCEPT,
    note="Go's encoding/json keeps the last of repeated keys without complaint.",
)
def _(layout: Layout) -> None:
    blob, diff_id = layout.layer()
    config_text = (
        '{"architecture":"arm64","architecture":"amd64","os":"linux",'
        f'"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}'
    ).encode()
    config = layout.blob(config_text)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_GZIP, blob)],
    }
    manifest = layout.blob(dumps(body))
    layout.oci_layout()
    entry = descriptor(
        OCI_MANIFEST,
        manifest,
        platform={"architecture": "amd64", "os": "linux"},
        annotations={REF_NAME: "latest"},
    )
    layout.index([entry])
    layout.error("json-duplicate-key", config.file, "$")


# Ref names and platforms


@case(
    "ref-name-invalid",
    'a ref name "-latest" that breaks the ref grammar',
    {"skopeo": REJECT, "umoci": REJECT, "syft": ACCEPT},
    ref="-latest",
    note=(
        "skopeo and umoci reject the malformed reference; syft ignores ref "
        "names when index.json holds one image."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    layout.index([image.entry("-latest")])
    layout.error(
        "ref-name-invalid",
        "index.json",
        '$.manifests[0].annotations["org.opencontainers.image.ref.name"]',
    )


@case(
    "ref-name-duplicate",
    "two different images share the ref name latest",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    note=(
        "skopeo 1.9.3 takes the first descriptor with the ref name; umoci "
        "reports that the tag is ambiguous."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    first = layout.image("amd64")
    second = layout.image("arm64")
    layout.index([first.entry("latest"), second.entry("latest")])
    layout.error(
        "ref-name-duplicate",
        "index.json",
        '$.manifests[1].annotations["org.opencontainers.image.ref.name"]',
    )


@case(
    "platform-invalid",
    "an index.json platform without os",
    ALL_ACCEPT,
    note="The consumers do not read platform on a single image manifest entry.",
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    entry = image.entry()
    del entry["platform"]["os"]
    layout.index([entry])
    layout.error("platform-invalid", "index.json", "$.manifests[0].platform.os")


# Nesting


@case(
    "index-too-deep",
    "a chain of 20 nested indexes above one image",
    {"skopeo": REJECT, "umoci": ACCEPT, "syft": REJECT},
    note=(
        "umoci follows nested indexes to any depth; skopeo 1.9.3 and syft "
        "reject an index inside an index at all."
    ),
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    image = layout.image()
    child = image.entry(ref=None)
    chain = []
    for _ in range(20):
        nested = layout.nested_index([child])
        chain.append(nested)
        child = descriptor(OCI_INDEX, nested)
    layout.index([descriptor(OCI_INDEX, chain[-1], annotations={REF_NAME: "latest"})])
    # index.json is depth 0; the 16th nested index's child would be depth 17.
    layout.error("index-depth-exceeded", chain[-16].file, "$.manifests[0]")


@case(
    "index-cycle",
    "a nested index stored under a digest it lists as its own child",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    layout.oci_layout()
    encoded = hashlib.sha256(b"cycle").hexdigest()
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_INDEX, "digest": f"sha256:{encoded}", "size": 0}
        ],
    }
    # The size field is part of the body, so repeat until it states its own length.
    data = dumps(body)
    while body["manifests"][0]["size"] != len(data):
        body["manifests"][0]["size"] = len(data)
        data = dumps(body)
    layout.write(f"blobs/sha256/{encoded}", data)
    layout.index(
        [
            {
                "mediaType": OCI_INDEX,
                "digest": f"sha256:{encoded}",
                "size": len(data),
                "annotations": {REF_NAME: "latest"},
            }
        ]
    )
    file = f"blobs/sha256/{encoded}"
    layout.error("digest-mismatch", "index.json", "$.manifests[0].digest")
    layout.error("digest-mismatch", file, "$.manifests[0].digest")
    layout.error("index-cycle", file, "$.manifests[0].digest")


@case(
    "many-problems",
    "one layout with five unrelated errors, all of which must be reported",
    ALL_REJECT,
)
def _(layout: Layout) -> None:
    def breaks(body: dict) -> None:
        body["layers"][0]["size"] = -1
        body["layers"].append({"mediaType": OCI_GZIP, "size": 1})

    image = simple(layout, edit_manifest=breaks)
    layout.oci_layout(b'{"imageLayoutVersion":"0.9"}')
    layout.write("blobs/sha256/upload.tmp", b"")
    layout.error("oci-layout-invalid", "oci-layout", "$.imageLayoutVersion")
    layout.error("size-invalid", image.file, "$.layers[0].size")
    layout.error("field-missing", image.file, "$.layers[1]")
    layout.error("diff-ids-count", image.config.file, "$.rootfs.diff_ids")
    layout.error("stray-blob", "blobs/sha256/upload.tmp", None)


# Deep checks


@case(
    "deep-gzip-label-plain-tar",
    "a layer labelled tar+gzip whose content is a plain tar",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    compatibility=ALL_READABLE,
    note=(
        "Only a deep check decompresses layers. skopeo copies bytes without "
        "decompressing and syft detects the compression from the content; "
        "umoci trusts the label and fails to gunzip."
    ),
)
def _(layout: Layout) -> None:
    blob, diff_id = layout.layer(compression="tar")
    image = simple(layout, layers=[(blob, diff_id, OCI_GZIP)])
    layout.error(
        "layer-compression-mislabeled", image.file, "$.layers[0].mediaType", deep=True
    )


@case(
    "deep-diff-id-mismatch",
    "a config diff_id that is not the hash of the uncompressed layer",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": ACCEPT},
    compatibility=ALL_READABLE,
    note=(
        "Only a deep check decompresses layers. skopeo copies bytes without "
        "decompressing and syft does not compare diff_ids; umoci does."
    ),
)
def _(layout: Layout) -> None:
    blob, _ = layout.layer()
    wrong = "sha256:" + hashlib.sha256(b"another layer").hexdigest()
    image = simple(layout, layers=[(blob, wrong, OCI_GZIP)])
    layout.error(
        "diff-id-mismatch", image.config.file, "$.rootfs.diff_ids[0]", deep=True
    )


@case(
    "deep-gzip-corrupt",
    "a layer whose gzip stream is cut short, under a matching digest",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    compatibility=ALL_READABLE,
    note=(
        "Only a deep check decompresses layers. skopeo copies bytes without "
        "decompressing them."
    ),
)
def _(layout: Layout) -> None:
    tar = make_tar({"hello.txt": b"hello\n" * 200})
    data = compress(tar, "gzip")[:-20]
    blob = layout.blob(data)
    diff_id = f"sha256:{hashlib.sha256(tar).hexdigest()}"
    image = simple(layout, layers=[(blob, diff_id, OCI_GZIP)])
    layout.error("layer-corrupt", image.file, "$.layers[0].digest", deep=True)


@case(
    "deep-layer-not-tar",
    "a gzip layer that decompresses to text, not a tar archive",
    {"skopeo": ACCEPT, "umoci": REJECT, "syft": REJECT},
    compatibility=ALL_READABLE,
    note=(
        "Only a deep check decompresses layers. skopeo copies bytes without "
        "decompressing them."
    ),
)
def _(layout: Layout) -> None:
    text = b"this is not a tar archive\n" * 40
    blob = layout.blob(compress(text, "gzip"))
    diff_id = f"sha256:{hashlib.sha256(text).hexdigest()}"
    image = simple(layout, layers=[(blob, diff_id, OCI_GZIP)])
    layout.error("layer-not-tar", image.file, "$.layers[0].digest", deep=True)


# Writing the corpus


def verdict(problems: list[dict], deep: bool) -> str:
    errors = [
        p for p in problems if p["severity"] == "error" and (deep or not p["deep_only"])
    ]
    return "invalid" if errors else "valid"


def codes(problems: list[dict], severity: str, deep: bool) -> list[str]:
    return sorted(
        {
            p["code"]
            for p in problems
            if p["severity"] == severity and (deep or not p["deep_only"])
        }
    )


def write_case(spec: Case, out: Path) -> None:
    folder = out / spec.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    layout = Layout(folder / "layout")
    layout.root.mkdir()
    spec.build(layout)

    problems = sorted(layout.expected, key=lambda p: json.dumps(p, sort_keys=True))
    expected = {
        "case": spec.name,
        "summary": spec.summary,
        "verdict": verdict(problems, deep=False),
        "deep_verdict": verdict(problems, deep=True),
        "problems": problems,
        "ref": spec.ref,
        "consumers": spec.consumers,
        "compatibility": spec.compatibility
        or {"syft": False, "skopeo": False, "umoci": False},
        "note": spec.note,
    }
    (folder / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    (folder / "README.md").write_text(readme(spec, problems))


def readme(spec: Case, problems: list[dict]) -> str:
    shallow = verdict(problems, deep=False)
    deep = verdict(problems, deep=True)
    line = f"Case: {spec.summary}. Expected verdict: {shallow}"
    if deep != shallow:
        line += f" ({deep} with a deep check)"
    errors = codes(problems, "error", deep=True)
    warnings = codes(problems, "warning", deep=True)
    if errors:
        line += f"; errors: {', '.join(errors)}"
    if warnings:
        line += f"; warnings: {', '.join(warnings)}"
    text = (
        f"# {spec.name}\n\n{line}.\n\n"
        f"Written by spec-fixtures/generate.py, case {spec.name}.\n\n"
    )
    verdicts = [
        f"{name} {'not run' if value is None else value + 's'}"
        for name, value in spec.consumers.items()
    ]
    text += f"Consumers: {', '.join(verdicts)}."
    if spec.note:
        text += f" {spec.note}"
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder to write cases into"
    )
    parser.add_argument("cases", nargs="*", help="case names to write (default: all)")
    args = parser.parse_args(argv)

    names = {c.name for c in CASES}
    if len(names) != len(CASES):
        raise SystemExit("two cases share a name")
    unknown = set(args.cases) - names
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")

    for spec in CASES:
        if not args.cases or spec.name in args.cases:
            write_case(spec, args.out)
    print(f"wrote {len(args.cases) or len(CASES)} cases to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
