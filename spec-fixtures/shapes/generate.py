"""Write the image-shape corpus: one small OCI layout per image shape seen in stores.

Each shape folder contains ``layout/``, an OCI image layout whose ``index.json``
names the shape's image ``latest`` (the referrer shape adds ``sbom`` and
``signature``), and a README.md that says how the layout was made and what
``ocilayout build`` is expected to do with it.

The content is real software, so that scanners find packages: Debian's
netbase unpacked together with its dpkg status entry, and the six wheel
unpacked into dist-packages (Windows shapes carry six under ``Files/``, where
Windows layers keep their files). Downloads go through emulator.imagegen and
its cache, and both files are pinned by sha256, so every run writes the same
bytes. Run from the repository root:

    .venv/bin/python spec-fixtures/shapes/generate.py          # rewrite the corpus
    .venv/bin/python spec-fixtures/shapes/generate.py --out DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulator.imagegen import (
    CREATED,
    IN_TOTO_MEDIA_TYPE,
    IN_TOTO_PREDICATE_ANNOTATION,
    REFERENCE_DIGEST_ANNOTATION,
    REFERENCE_TYPE_ANNOTATION,
    SPDX_MEDIA_TYPE,
    SPDX_PREDICATE_TYPE,
    LayoutWriter,
    cache_directory,
    compress,
    fetch_debs,
    fetch_wheels,
    tar_directory,
    tar_directory_from_files,
    unpack_debs,
    unpack_wheels,
)
from ocilayout import mediatypes as mt

HERE = Path(__file__).resolve().parent
REF = "latest"

DEB_PACKAGE = "netbase"
WHEEL = "six==1.16.0"
# The files the committed corpus was made from. Another version of either
# would change every digest, so the generator stops instead.
PINNED_SHA256 = {
    "netbase_6.4_all.deb": (
        "29b23c48c0fe6f878e56c5ddc9f65d1c05d729360f3690a593a8c795031cd867"
    ),
    "six-1.16.0-py2.py3-none-any.whl": (
        "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
    ),
}

SLSA_PROVENANCE = "https://slsa.dev/provenance/v0.2"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
JWS_ENVELOPE = "application/jose+json"
TITLE_ANNOTATION = "org.opencontainers.image.title"
# Windows Server 2019 and 2022 builds, as mcr.microsoft.com images list them.
WINDOWS_2019 = "10.0.17763.5458"
WINDOWS_2022 = "10.0.20348.2340"
# A foreign layer's URL points at Microsoft's registry in real images. The
# reserved .invalid domain keeps any tool that might follow it off the network.
FOREIGN_URL = "https://foreign-layers.invalid/v2/windows/servercore/blobs/"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


# Content


@dataclass(frozen=True)
class Trees:
    """Uncompressed layer tars that the shapes share."""

    dpkg: bytes
    python: bytes
    windows: bytes


def build_trees(cache: Path) -> Trees:
    """Fetch (or reuse) the pinned packages and tar them as layers."""
    debs = fetch_debs([DEB_PACKAGE], cache)
    wheels = fetch_wheels([WHEEL], cache)
    for path in debs + wheels:
        _check_pinned(path)

    with tempfile.TemporaryDirectory(prefix="ocilayout-shapes-") as scratch:
        roots = {name: Path(scratch) / name for name in ("dpkg", "python", "win")}
        for root in roots.values():
            root.mkdir()
        unpack_debs(debs, roots["dpkg"])
        unpack_wheels(wheels, roots["python"])
        unpack_wheels(wheels, roots["win"])
        site = roots["win"] / "Files" / "Python" / "Lib"
        site.mkdir(parents=True)
        site.chmod(0o755)
        (roots["win"] / "usr/lib/python3/dist-packages").rename(site / "site-packages")
        shutil.rmtree(roots["win"] / "usr")
        return Trees(
            dpkg=tar_directory(roots["dpkg"]),
            python=tar_directory(roots["python"]),
            windows=tar_directory(roots["win"]),
        )


def _check_pinned(path: Path) -> None:
    expected = PINNED_SHA256.get(path.name)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected != actual:
        raise SystemExit(
            f"error: {path} (sha256 {actual}) is not the file the corpus was made "
            f"from; expected one of {', '.join(sorted(PINNED_SHA256))} with the "
            "sha256 in PINNED_SHA256. Put that file in the download cache, or "
            "update the pins and regenerate the whole corpus."
        )


# Layout writing


class Sha512LayoutWriter(LayoutWriter):
    """A layout writer that addresses every blob by sha512."""

    def add_blob(self, media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
        encoded = hashlib.sha512(data).hexdigest()
        folder = self.path / "blobs" / "sha512"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / encoded).write_bytes(data)
        descriptor = {
            "mediaType": media_type,
            "digest": f"sha512:{encoded}",
            "size": len(data),
        }
        descriptor.update(extra)
        return descriptor


@dataclass(frozen=True)
class Layer:
    descriptor: dict[str, Any]
    diff_id: str


@dataclass(frozen=True)
class Image:
    """An image manifest written to a layout, with the platform it runs on."""

    descriptor: dict[str, Any]
    platform: dict[str, str]

    def child(self, with_platform: bool = True) -> dict[str, Any]:
        """Return the descriptor an index lists for this image."""
        if not with_platform:
            return dict(self.descriptor)
        return {**self.descriptor, "platform": self.platform}


def add_layer(writer: LayoutWriter, tar: bytes, media_type: str, **extra) -> Layer:
    """Compress ``tar`` as ``media_type`` requires and store it as a layer blob."""
    data = compress(tar, mt.compression_of(media_type))
    descriptor = writer.add_blob(media_type, data, **extra)
    return Layer(descriptor, "sha256:" + hashlib.sha256(tar).hexdigest())


def platform(text: str, os_version: str | None = None) -> dict[str, str]:
    """Parse ``os/arch[/variant]`` into an OCI platform object."""
    parts = text.split("/")
    result = {"architecture": parts[1], "os": parts[0]}
    if os_version:
        result["os.version"] = os_version
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


def platform_text(value: dict[str, str]) -> str:
    text = f"{value['os']}/{value['architecture']}"
    if value.get("variant"):
        text += f"/{value['variant']}"
    if value.get("os.version"):
        text += f" {value['os.version']}"
    return text


def marker_layer(writer: LayoutWriter, target: dict[str, str], media_type: str):
    """Add a one-file layer naming the platform, so each platform's image differs."""
    name = "etc/ocilayout-platform"
    if target["os"] == "windows":
        name = "Files/ProgramData/ocilayout-platform.txt"
    tar = tar_directory_from_files({name: f"{platform_text(target)}\n".encode()})
    return add_layer(writer, tar, media_type)


def add_image(
    writer: LayoutWriter,
    target: dict[str, str],
    layers: list[Layer],
    *,
    docker: bool = False,
) -> Image:
    """Add a config and manifest for ``layers`` plus a platform marker layer."""
    marker_type = layers[-1].descriptor["mediaType"]
    layers = layers + [marker_layer(writer, target, marker_type)]
    config = {
        **target,
        "created": CREATED,
        "config": {"Env": ENV},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": f"layer {position}"}
            for position in range(len(layers))
        ],
    }
    config_type = mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
    manifest_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": writer.add_json(config_type, config),
        "layers": [layer.descriptor for layer in layers],
    }
    return Image(writer.add_json(manifest_type, manifest), target)


def add_index(
    writer: LayoutWriter, children: list[dict[str, Any]], media_type: str = mt.OCI_INDEX
) -> dict[str, Any]:
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": children}
    return writer.add_json(media_type, index)


def add_attestation(writer: LayoutWriter, image: Image, *, sbom: bool) -> dict:
    """Add a buildx attestation manifest for ``image``: provenance, maybe an SBOM.

    buildx writes one such manifest per platform, with platform unknown/unknown
    and annotations naming the image it attests.
    """
    predicates = [
        (SLSA_PROVENANCE, {"buildType": "https://mobyproject.org/buildkit@v1"})
    ]
    if sbom:
        predicates.append((SPDX_PREDICATE_TYPE, _spdx_document(image)))
    layers = []
    for predicate_type, predicate in predicates:
        statement = _in_toto_statement(image, predicate_type, predicate)
        layers.append(
            writer.add_json(
                IN_TOTO_MEDIA_TYPE,
                statement,
                annotations={IN_TOTO_PREDICATE_ANNOTATION: predicate_type},
            )
        )
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": writer.add_json(mt.OCI_CONFIG, config),
        "layers": layers,
    }
    return writer.add_json(
        mt.OCI_MANIFEST,
        manifest,
        platform={"architecture": "unknown", "os": "unknown"},
        annotations={
            REFERENCE_DIGEST_ANNOTATION: image.descriptor["digest"],
            REFERENCE_TYPE_ANNOTATION: "attestation-manifest",
        },
    )


def _in_toto_statement(image: Image, predicate_type: str, predicate: dict) -> dict:
    algorithm, _, encoded = image.descriptor["digest"].partition(":")
    return {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [
            {
                "name": f"pkg:docker/shapes/app@{REF}",
                "digest": {algorithm: encoded},
            }
        ],
        "predicate": predicate,
    }


def _spdx_document(image: Image) -> dict:
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"shapes/app {platform_text(image.platform)}",
        "documentNamespace": f"urn:ocilayout-shapes:{image.descriptor['digest']}",
        "creationInfo": {"created": CREATED, "creators": ["Tool: ocilayout-shapes"]},
        "packages": [
            {"name": "netbase", "SPDXID": "SPDXRef-netbase", "versionInfo": "6.4"},
            {"name": "six", "SPDXID": "SPDXRef-six", "versionInfo": "1.16.0"},
        ],
    }


def linux_image(
    writer: LayoutWriter,
    trees: Trees,
    text: str,
    compression: str = mt.OCI_LAYER_GZIP,
    **options,
) -> Image:
    """Add a linux image of netbase and six for the platform ``text``."""
    layers = [
        add_layer(writer, trees.dpkg, compression),
        add_layer(writer, trees.python, compression),
    ]
    return add_image(writer, platform(text), layers, **options)


def windows_image(
    writer: LayoutWriter, trees: Trees, os_version: str, foreign: bool
) -> Image:
    """Add a Docker v2 windows/amd64 image with six under Files/.

    With ``foreign``, the first layer is a non-distributable base layer with
    ``urls``, as Windows base images long had.
    """
    layers = []
    if foreign:
        base = tar_directory_from_files(
            {"Files/Windows/System32/ocilayout-base.txt": b"foreign base layer\n"}
        )
        data = compress(base, "gzip")
        url = FOREIGN_URL + "sha256:" + hashlib.sha256(data).hexdigest()
        layers.append(add_layer(writer, base, mt.DOCKER_FOREIGN_LAYER, urls=[url]))
    layers.append(add_layer(writer, trees.windows, mt.DOCKER_LAYER_GZIP))
    return add_image(writer, platform("windows/amd64", os_version), layers, docker=True)


# Shapes


def shape_oci_manifest(writer: LayoutWriter, trees: Trees) -> dict:
    return linux_image(writer, trees, "linux/amd64").child(False)


def shape_docker_v2(writer: LayoutWriter, trees: Trees) -> dict:
    image = linux_image(writer, trees, "linux/amd64", mt.DOCKER_LAYER_GZIP, docker=True)
    return image.child(False)


def shape_oci_index_attestations(writer: LayoutWriter, trees: Trees) -> dict:
    images = [
        linux_image(writer, trees, text) for text in ("linux/amd64", "linux/arm64/v8")
    ]
    attestations = [add_attestation(writer, image, sbom=True) for image in images]
    return add_index(writer, [image.child() for image in images] + attestations)


def _buildx_index(writer: LayoutWriter, trees: Trees, text: str) -> dict:
    image = linux_image(writer, trees, text)
    return add_index(
        writer, [image.child(), add_attestation(writer, image, sbom=False)]
    )


def shape_buildx_nested(writer: LayoutWriter, trees: Trees) -> dict:
    return add_index(writer, [_buildx_index(writer, trees, "linux/amd64")])


def shape_index_of_indexes(writer: LayoutWriter, trees: Trees) -> dict:
    children = [
        _buildx_index(writer, trees, text) for text in ("linux/arm64/v8", "linux/amd64")
    ]
    return add_index(writer, children)


def shape_docker_manifest_list(writer: LayoutWriter, trees: Trees) -> dict:
    images = [
        linux_image(writer, trees, text, mt.DOCKER_LAYER_GZIP, docker=True)
        for text in ("linux/amd64", "linux/arm64/v8")
    ]
    return add_index(writer, [image.child() for image in images], mt.DOCKER_LIST)


def shape_windows_os_version(writer: LayoutWriter, trees: Trees) -> dict:
    images = [
        windows_image(writer, trees, version, foreign=False)
        for version in (WINDOWS_2019, WINDOWS_2022)
    ]
    return add_index(writer, [image.child() for image in images], mt.DOCKER_LIST)


def shape_arm_variants(writer: LayoutWriter, trees: Trees) -> dict:
    texts = ("linux/arm/v6", "linux/arm/v7", "linux/arm64/v8")
    return add_index(
        writer, [linux_image(writer, trees, text).child() for text in texts]
    )


def shape_arm_bare(writer: LayoutWriter, trees: Trees) -> dict:
    texts = ("linux/arm", "linux/arm64")
    return add_index(
        writer, [linux_image(writer, trees, text).child() for text in texts]
    )


def shape_zstd_layers(writer: LayoutWriter, trees: Trees) -> dict:
    return linux_image(writer, trees, "linux/amd64", mt.OCI_LAYER_ZSTD).child(False)


def shape_uncompressed_layers(writer: LayoutWriter, trees: Trees) -> dict:
    layers = [add_layer(writer, trees.dpkg, mt.OCI_LAYER_TAR)]
    return add_image(writer, platform("linux/amd64"), layers).child(False)


def shape_foreign_layer_present(writer: LayoutWriter, trees: Trees) -> dict:
    return windows_image(writer, trees, WINDOWS_2019, foreign=True).child(False)


def shape_foreign_layer_absent(writer: LayoutWriter, trees: Trees) -> dict:
    top = windows_image(writer, trees, WINDOWS_2019, foreign=True).child(False)
    manifest = json.loads(_blob(writer, top["digest"]).read_bytes())
    _blob(writer, manifest["layers"][0]["digest"]).unlink()
    return top


def shape_helm_chart(writer: LayoutWriter, trees: Trees) -> dict:
    chart = {
        "demo/Chart.yaml": b"apiVersion: v2\nname: demo\nversion: 0.1.0\n",
        "demo/values.yaml": b"replicaCount: 1\n",
        "demo/templates/configmap.yaml": (
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
        ),
    }
    layer = writer.add_blob(
        HELM_CHART, _tar_gz(chart), annotations={TITLE_ANNOTATION: "demo-0.1.0.tgz"}
    )
    config = {"apiVersion": "v2", "name": "demo", "version": "0.1.0"}
    # Helm releases built on oras-go v1 pushed chart manifests without a
    # top-level mediaType, because oras-go v1 packs manifests without one.
    manifest = {
        "schemaVersion": 2,
        "config": writer.add_json(HELM_CONFIG, config),
        "layers": [layer],
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    return writer.add_json(mt.OCI_MANIFEST, manifest)


def shape_empty_config_artifact(writer: LayoutWriter, trees: Trees) -> dict:
    notes = b"# Release notes\n\nNothing to run here.\n"
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.release-notes.v1",
        "config": writer.add_blob(mt.OCI_EMPTY, b"{}"),
        "layers": [
            writer.add_blob(
                "text/markdown", notes, annotations={TITLE_ANNOTATION: "NOTES.md"}
            )
        ],
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    return writer.add_json(
        mt.OCI_MANIFEST, manifest, artifactType=manifest["artifactType"]
    )


def shape_schema1(writer: LayoutWriter, trees: Trees) -> dict:
    layers = [
        add_layer(writer, tree, mt.DOCKER_LAYER_GZIP)
        for tree in (trees.dpkg, trees.python)
    ]
    # Schema 1 lists layers newest first, each with a v1Compatibility record.
    history = []
    parent = None
    for position, layer in enumerate(layers):
        layer_id = hashlib.sha256(layer.diff_id.encode()).hexdigest()
        record = {"id": layer_id, "created": CREATED}
        if parent:
            record["parent"] = parent
        if position == len(layers) - 1:
            record.update(architecture="amd64", os="linux", config={"Env": ENV})
        history.append({"v1Compatibility": json.dumps(record, sort_keys=True)})
        parent = layer_id
    manifest = {
        "schemaVersion": 1,
        "name": "shapes/schema1",
        "tag": REF,
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer.descriptor["digest"]} for layer in layers][::-1],
        "history": history[::-1],
    }
    body = json.dumps(manifest, indent=3).encode()
    return writer.add_blob(mt.DOCKER_SCHEMA1, body)


def shape_attestations_only_index(writer: LayoutWriter, trees: Trees) -> dict:
    attestations = []
    for text in ("linux/amd64", "linux/arm64/v8"):
        image = linux_image(writer, trees, text)
        attestations.append(add_attestation(writer, image, sbom=True))
    top = add_index(writer, attestations)
    _prune(writer, top)
    return top


def shape_referrer(writer: LayoutWriter, trees: Trees) -> dict:
    image = linux_image(writer, trees, "linux/amd64").child(False)
    subject = {key: image[key] for key in ("mediaType", "digest", "size")}
    sbom = {
        "spdxVersion": "SPDX-2.3",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom of {image['digest']}",
        "packages": [
            {"name": "netbase", "SPDXID": "SPDXRef-netbase", "versionInfo": "6.4"},
            {"name": "six", "SPDXID": "SPDXRef-six", "versionInfo": "1.16.0"},
        ],
    }
    envelope = {"payload": "", "protected": "", "header": {}, "signature": ""}
    referrers = {
        "sbom": (SPDX_MEDIA_TYPE, SPDX_MEDIA_TYPE, sbom),
        "signature": (NOTATION_SIGNATURE, JWS_ENVELOPE, envelope),
    }
    for ref, (artifact_type, layer_type, content) in referrers.items():
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": writer.add_blob(mt.OCI_EMPTY, b"{}"),
            "layers": [writer.add_json(layer_type, content)],
            "subject": subject,
            "annotations": {"org.opencontainers.image.created": CREATED},
        }
        descriptor = writer.add_json(
            mt.OCI_MANIFEST, manifest, artifactType=artifact_type
        )
        writer.set_ref(descriptor, ref)
    return image


def shape_sha512_image(writer: LayoutWriter, trees: Trees) -> dict:
    return linux_image(writer, trees, "linux/amd64").child(False)


@dataclass(frozen=True)
class Shape:
    name: str
    write: Callable[[LayoutWriter, Trees], dict]
    made: str
    outcome: str
    writer: type[LayoutWriter] = LayoutWriter


SHAPES = [
    Shape(
        "oci-manifest",
        shape_oci_manifest,
        "One OCI image manifest for linux/amd64 with gzip layers (netbase, six, "
        "a platform marker).",
        "Both shapes build; syft finds 2 packages; skopeo copies the full layout.",
    ),
    Shape(
        "docker-v2",
        shape_docker_v2,
        "One Docker v2 schema 2 manifest and config for linux/amd64 with Docker "
        "gzip layers, as `docker push` writes it.",
        "Both shapes build and keep the Docker media types; syft finds 2 "
        "packages; skopeo 1.9 rejects Docker media types in an OCI layout.",
    ),
    Shape(
        "oci-index-attestations",
        shape_oci_index_attestations,
        "An OCI index of linux/amd64 and linux/arm64/v8 images plus one buildx "
        "attestation manifest each (SLSA provenance and SPDX in-toto layers, "
        "platform unknown/unknown).",
        "The scan shape picks the host's platform and never an attestation; "
        "the full shape holds all four children and skopeo copies it with --all.",
    ),
    Shape(
        "buildx-nested",
        shape_buildx_nested,
        "An OCI index whose only child is another index, with no platform on "
        "that descriptor: a buildx single-platform result (linux/amd64 image and "
        "its provenance attestation) appended to an index.",
        "The scan shape follows both indexes to the linux/amd64 image; the full "
        "shape holds both indexes, which skopeo 1.9 inspects but cannot copy "
        "with --all. NOTE: an unmatched --platform should list linux/amd64 as "
        "offered, but ocilayout lists the nested index as (no platform).",
    ),
    Shape(
        "docker-manifest-list",
        shape_docker_manifest_list,
        "A Docker manifest list of linux/amd64 and linux/arm64/v8 Docker v2 "
        "manifests, as `docker manifest push` writes it.",
        "The scan shape picks one Docker v2 manifest that syft reads; skopeo 1.9 "
        "rejects the full layout because of its Docker media types.",
    ),
    Shape(
        "index-of-indexes",
        shape_index_of_indexes,
        "An OCI index of two buildx single-platform indexes, linux/arm64/v8 first, "
        "then linux/amd64, each with a provenance attestation.",
        "The scan shape picks the requested platform from either nested index "
        "and, without --platform, the host's; the full shape holds all three "
        "indexes, which skopeo 1.9 inspects but cannot copy with --all. NOTE: "
        "without --platform ocilayout picks from the first nested index even "
        "when a later one holds the host's platform, and --shape full with "
        "--platform finds no child.",
    ),
    Shape(
        "windows-os-version",
        shape_windows_os_version,
        f"A Docker manifest list of two windows/amd64 Docker v2 images, os.version "
        f"{WINDOWS_2019} then {WINDOWS_2022}, with six under Files/ as Windows "
        "layers store files.",
        "A request with an os.version picks the child whose os.version it "
        "equals or prefixes; without one, the first child wins; syft finds six; "
        "skopeo 1.9 rejects Docker media types in an OCI layout.",
    ),
    Shape(
        "arm-variants",
        shape_arm_variants,
        "An OCI index of linux/arm/v6, linux/arm/v7 and linux/arm64/v8 images.",
        "linux/arm picks arm/v7 and linux/arm64 picks arm64/v8; each child builds.",
    ),
    Shape(
        "arm-bare",
        shape_arm_bare,
        "An OCI index of linux/arm and linux/arm64 images whose descriptors and "
        "configs carry no variant, as older manifest lists do.",
        "linux/arm/v7 picks the bare arm child and linux/arm64/v8 the bare arm64 "
        "child; linux/arm/v6 matches nothing.",
    ),
    Shape(
        "zstd-layers",
        shape_zstd_layers,
        "One OCI manifest for linux/amd64 whose layers are tar+zstd, as buildx "
        "writes with compression=zstd.",
        "Both shapes build; syft finds 2 packages; skopeo copies the full layout.",
    ),
    Shape(
        "uncompressed-layers",
        shape_uncompressed_layers,
        "One OCI manifest for linux/amd64 with plain tar layers (netbase and a "
        "marker).",
        "Both shapes build; syft finds netbase; skopeo copies the full layout.",
    ),
    Shape(
        "foreign-layer-present",
        shape_foreign_layer_present,
        f"A Docker v2 windows/amd64 ({WINDOWS_2019}) image whose base layer has "
        "the Docker foreign media type and urls; the layout holds its blob.",
        "Both shapes build with the foreign layer placed; syft finds six; "
        "skopeo 1.9 rejects Docker media types in an OCI layout.",
    ),
    Shape(
        "foreign-layer-absent",
        shape_foreign_layer_absent,
        "The foreign-layer-present image with the foreign layer's blob removed "
        "from the layout, as a registry holds it when the pusher skipped it.",
        "Both shapes build and warn that the foreign layer was left out; nothing "
        "is fetched from its urls. syft 1.18 cannot read the layout, because it "
        "opens every layer the manifest lists.",
    ),
    Shape(
        "helm-chart",
        shape_helm_chart,
        "A Helm chart artifact: config application/vnd.cncf.helm.config.v1+json, "
        "one chart tar+gzip layer, and no top-level mediaType, as Helm releases "
        "built on oras-go v1 pushed it.",
        'The scan shape fails with exit 1, "not a container image"; the full '
        "shape copies the artifact.",
    ),
    Shape(
        "empty-config-artifact",
        shape_empty_config_artifact,
        "An OCI 1.1 artifact with artifactType, the empty descriptor as config "
        "and one text/markdown layer, as `oras push` writes it.",
        'The scan shape fails with exit 1, "not a container image"; the full '
        "shape copies the artifact.",
    ),
    Shape(
        "schema1",
        shape_schema1,
        "A Docker schema 1 manifest (unsigned, "
        "application/vnd.docker.distribution.manifest.v1+json) over two gzip "
        "layers; the emulator's push does not take schema 1, so the test writes "
        "the store rows itself.",
        'Both shapes fail with exit 1, "schema 1".',
    ),
    Shape(
        "attestations-only-index",
        shape_attestations_only_index,
        "An OCI index whose only children are two buildx attestation manifests; "
        "the images they attest are not in the layout.",
        'The scan shape fails with exit 3, "no runnable child".',
    ),
    Shape(
        "referrer",
        shape_referrer,
        "A linux/amd64 OCI image (ref latest) plus two OCI 1.1 referrers whose "
        "subject is that image: an SPDX SBOM (ref sbom) and a Notation-style "
        "signature (ref signature), both with the empty config.",
        "The image builds; --referrers adds both referrers to index.json and "
        "skopeo copies the full layout; building a referrer itself fails with "
        '"not a container image". NOTE: --referrers with the scan shape also '
        "adds them, and syft rejects an index.json with three entries.",
    ),
    Shape(
        "sha512-image",
        shape_sha512_image,
        "One OCI manifest for linux/amd64 whose manifest, config and layers are "
        "all addressed by sha512 (diff_ids stay sha256).",
        "Both shapes build with blobs under blobs/sha512. skopeo 1.9 reads the "
        "manifest but its copy recomputes digests as sha256 and fails; syft 1.18 "
        'rejects the layout ("unsupported hash").',
        Sha512LayoutWriter,
    ),
]


def write_shape(shape: Shape, trees: Trees, folder: Path) -> None:
    """Write one shape's layout and README into ``folder``, replacing both."""
    layout = folder / "layout"
    if layout.exists():
        shutil.rmtree(layout)
    folder.mkdir(parents=True, exist_ok=True)
    writer = shape.writer(layout)
    top = shape.write(writer, trees)
    writer.set_ref(top, REF)
    _remove_empty_folders(layout / "blobs")
    readme = f"# {shape.name}\n\n{shape.made} Expected: {shape.outcome}\n"
    (folder / "README.md").write_text(readme)


def _blob(writer: LayoutWriter, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return writer.path / "blobs" / algorithm / encoded


def _prune(writer: LayoutWriter, top: dict) -> None:
    """Delete blobs that ``top`` does not reach, such as unlisted images."""
    reachable = set()
    pending = [top]
    while pending:
        descriptor = pending.pop()
        reachable.add(descriptor["digest"])
        if descriptor["mediaType"] not in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
            continue
        document = json.loads(_blob(writer, descriptor["digest"]).read_bytes())
        pending.extend(document.get("manifests", []))
        pending.extend(document.get("layers", []))
        if "config" in document:
            pending.append(document["config"])
    for path in (writer.path / "blobs").glob("*/*"):
        if f"{path.parent.name}:{path.name}" not in reachable:
            path.unlink()


def _remove_empty_folders(blobs: Path) -> None:
    for folder in blobs.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    """Return a deterministic tar+gzip of ``files``, as `helm package` writes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder to write the shapes into"
    )
    parser.add_argument("names", nargs="*", help="shapes to write (default: all)")
    options = parser.parse_args(argv)

    known = {shape.name: shape for shape in SHAPES}
    unknown = sorted(set(options.names) - set(known))
    if unknown:
        parser.error(f"unknown shape {', '.join(unknown)}; known: {', '.join(known)}")
    trees = build_trees(cache_directory())
    for name in options.names or list(known):
        write_shape(known[name], trees, options.out / name)
        print(f"wrote {options.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
