"""The walk from ``index.json`` through every descriptor a layout references."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import mediatypes as mt
from . import files as fs
from .blobs import BlobChecker
from .config import ImageConfig, check_image_config
from .fields import (
    REF_NAME_KEY,
    Findings,
    Ref,
    check_annotations,
    check_artifact_type,
    check_descriptor,
    is_ref_name,
    short,
)
from .jsonfile import MAX_JSON_BYTES, JSONProblem, child_path, parse_strict
from .layers import check_layer

# Nested indexes deeper than this are reported, not followed. Real images
# nest one or two levels; the bound stops hostile chains.
MAX_INDEX_DEPTH = 16

LAYOUT_VERSION = "1.0.0"
_HASH_CHUNK = 1 << 20
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number"}
_JSON_TYPES.update({bool: "boolean", type(None): "null"})


@dataclass
class Entry:
    """One descriptor of ``index.json``, with what its target turned out to be."""

    ref: Ref
    ref_name: str | None
    target: Target | None


@dataclass
class Target:
    """The content of a manifest or index body that compatibility rules need.

    ``algorithms`` contains the digest algorithms of this body and of every
    descriptor below it. ``children`` pairs an index's valid child targets
    with the platform their descriptor declares.
    """

    kind: str
    algorithms: set[str] = field(default_factory=set)
    config_media_type: str | None = None
    config_platform: tuple[str | None, str | None, str | None] | None = None
    layer_media_types: list[str | None] = field(default_factory=list)
    children: list[tuple[dict | None, Target]] = field(default_factory=list)

    @property
    def platform_specific(self) -> bool:
        return (
            self.kind == "manifest" and self.config_media_type in mt.IMAGE_CONFIG_TYPES
        )


class Walker:
    """Checks one layout; ``run`` fills ``findings`` and ``entries``."""

    def __init__(self, files: fs.LayoutFiles, findings: Findings, deep: bool):
        self.files = files
        self.findings = findings
        self.deep = deep
        self.entries: list[Entry] = []
        self.blobs = BlobChecker(files, self.findings)
        self._targets: dict[tuple[str, str], Target | None] = {}
        self._own_types: dict[str, object] = {}
        self._configs: dict[str, ImageConfig | None] = {}
        self._layers_checked: set[tuple[str, str, str]] = set()
        self._stack: list[str] = []

    def run(self) -> None:
        self._check_oci_layout()
        blobs_present = self._check_blobs_dir()

        index = self._read_layout_json("index.json", "index-missing")
        if index is not None:
            self._check_index(index, "index.json", depth=0, top=True)

        if blobs_present:
            self.blobs.scan()

    # Layout files

    def _check_oci_layout(self) -> None:
        layout = self._read_layout_json("oci-layout", "oci-layout-missing")
        if layout is None:
            return
        if "imageLayoutVersion" not in layout:
            self.findings.error(
                "oci-layout",
                "$",
                "oci-layout-invalid",
                f'oci-layout has no imageLayoutVersion; write {{"imageLayoutVersion": "{LAYOUT_VERSION}"}}',
            )
        elif layout["imageLayoutVersion"] != LAYOUT_VERSION:
            self.findings.error(
                "oci-layout",
                "$.imageLayoutVersion",
                "oci-layout-invalid",
                f"imageLayoutVersion is {short(layout['imageLayoutVersion'])}; "
                f"the only layout version is {LAYOUT_VERSION!r}",
            )

    def _check_blobs_dir(self) -> bool:
        names = self.files.list_dir(("blobs",))
        if names is not None:
            return True
        entry = self.files.stat(("blobs",))
        detail = "blobs does not exist" if entry.status == fs.MISSING else entry.detail
        if entry.status == fs.OK:
            detail = "blobs is a file"
        self.findings.error(
            "blobs",
            None,
            "blobs-missing",
            f"{detail}; a layout needs a blobs directory, even an empty one",
        )
        return False

    def _read_layout_json(self, name: str, missing_code: str) -> dict | None:
        data, entry = self.files.read((name,), MAX_JSON_BYTES)
        if entry.status == fs.MISSING:
            self.findings.error(
                name,
                None,
                missing_code,
                f"{name} does not exist; every layout needs one",
            )
            return None
        if entry.status in (fs.SYMLINK, fs.NOT_REGULAR):
            self.findings.error(
                name,
                None,
                "file-not-regular",
                f"{entry.detail}; {name} must be a regular file inside the layout",
            )
            return None
        if data is None:
            self.findings.error(name, None, "file-unreadable", entry.detail)
            return None
        return self._parse_json(name, data, self.findings)

    def _parse_json(self, file: str, data: bytes, findings: Findings) -> dict | None:
        if len(data) > MAX_JSON_BYTES:
            findings.error(
                file,
                None,
                "json-too-large",
                f"{file} is larger than {MAX_JSON_BYTES} bytes, the maximum this checker reads",
            )
            return None
        try:
            value, duplicates = parse_strict(data)
        except JSONProblem as exc:
            findings.error(
                file, None, "json-invalid", f"{file} is not valid JSON: {exc}"
            )
            return None
        for path, key in duplicates:
            findings.error(
                file,
                path,
                "json-duplicate-key",
                f"key {short(key)} appears more than once, so readers may disagree on "
                "its value; keep one",
            )
        if not isinstance(value, dict):
            findings.error(
                file,
                "$",
                "json-invalid",
                f"{file} contains a JSON {_JSON_TYPES.get(type(value), 'value')}, not an object",
            )
            return None
        return value

    # Indexes

    def _check_index(self, body: dict, file: str, depth: int, top: bool) -> Target:
        target = Target("index")
        self._check_schema_version(body, file)
        self._check_own_media_type(body, file, mt.OCI_INDEX if top else None)

        for key in ("config", "layers"):
            if key in body:
                self.findings.error(
                    file,
                    f"$.{key}",
                    "ambiguous-index",
                    f"an image index must not carry {key!r}; a body with both "
                    "manifests and config or layers can pass as either type",
                )
        check_artifact_type(self.findings, body, file, "$")
        check_annotations(self.findings, body, file, "$")

        self._check_manifest_list(body, file, depth, top, target)
        if top:
            self._check_ref_names()
        self._check_subject(body, file, depth)
        return target

    def _check_manifest_list(
        self, body: dict, file: str, depth: int, top: bool, target: Target
    ) -> None:
        manifests = self._required_array(body, "manifests", file)
        for i, value in enumerate(manifests):
            path = f"$.manifests[{i}]"
            ref = check_descriptor(self.findings, value, file, path)
            if ref is None:
                continue
            child = self._check_index_entry(ref, depth)
            if child is not None:
                target.children.append((ref.platform, child))
                target.algorithms |= child.algorithms
            if top:
                self.entries.append(
                    Entry(ref, ref.annotations.get(REF_NAME_KEY), child)
                )
            elif REF_NAME_KEY in ref.annotations:
                self.findings.warning(
                    file,
                    child_path(child_path(path, "annotations"), REF_NAME_KEY),
                    "ref-name-misplaced",
                    "org.opencontainers.image.ref.name is meaningful only on "
                    "index.json descriptors; readers ignore it here",
                )

    def _check_index_entry(self, ref: Ref, depth: int) -> Target | None:
        target = self._follow(ref, depth)
        if target is None:
            return None

        if target.platform_specific and not ref.has_platform:
            self.findings.warning(
                ref.file,
                ref.path,
                "platform-missing",
                f"descriptor of image manifest {ref.digest} has no platform; "
                "it should carry architecture and os",
            )
        if ref.platform is not None and target.config_platform is not None:
            self._compare_platform(ref, target.config_platform)
        return target

    def _compare_platform(self, ref: Ref, config: tuple) -> None:
        config_os, config_arch, _ = config
        declared = (ref.platform.get("os"), ref.platform.get("architecture"))
        if None in (config_os, config_arch) or declared == (config_os, config_arch):
            return
        self.findings.warning(
            ref.file,
            child_path(ref.path, "platform"),
            "platform-mismatch",
            f"platform says {declared[0]}/{declared[1]} but the image config "
            f"says {config_os}/{config_arch}",
        )

    def _check_ref_names(self) -> None:
        seen: dict[str, str] = {}
        for entry in self.entries:
            if REF_NAME_KEY not in entry.ref.annotations:
                continue
            name = entry.ref_name
            path = child_path(child_path(entry.ref.path, "annotations"), REF_NAME_KEY)
            if not is_ref_name(name):
                self.findings.error(
                    "index.json",
                    path,
                    "ref-name-invalid",
                    f"ref name {short(name)} is invalid: use components of letters "
                    "and digits joined by one of -._:@+ or --, separated by /",
                )
                entry.ref_name = None
                continue
            if name in seen:
                # NOTE: image-spec 1.1 does not require unique ref names, but
                # skopeo and umoci cannot address an image by a repeated one.
                self.findings.error(
                    "index.json",
                    path,
                    "ref-name-duplicate",
                    f"ref name {name!r} is also used by {seen[name]}; "
                    "give each image its own name",
                )
                continue
            seen[name] = entry.ref.path

    # Manifests

    def _check_manifest(self, body: dict, file: str, depth: int) -> Target:
        self._check_schema_version(body, file)
        self._check_own_media_type(body, file, None)
        if "manifests" in body:
            self.findings.error(
                file,
                "$.manifests",
                "ambiguous-manifest",
                "an image manifest must not carry 'manifests'; a body with both "
                "can pass as either an index or a manifest",
            )
        check_artifact_type(self.findings, body, file, "$")
        check_annotations(self.findings, body, file, "$")

        config_ref = None
        if "config" not in body:
            self.findings.error(
                file,
                "$",
                "field-missing",
                "manifest has no config descriptor; it is required",
            )
        else:
            config_ref = check_descriptor(
                self.findings, body["config"], file, "$.config"
            )
        config = self._check_config_ref(config_ref)
        self._check_artifact_type_needed(body, file, config_ref)

        layers = self._check_layers(body, file)
        if layers is not None and config is not None and config.diff_ids is not None:
            self._compare_diff_ids(config_ref, config, layers, file)
        self._check_subject(body, file, depth)

        target = Target("manifest")
        if config_ref is not None:
            target.config_media_type = config_ref.media_type
            target.algorithms.add(config_ref.algorithm)
        if config is not None:
            target.config_platform = (config.os, config.architecture, config.variant)
        for layer in layers or []:
            if layer is not None:
                target.layer_media_types.append(layer.media_type)
                target.algorithms.add(layer.algorithm)
        target.algorithms.discard(None)
        return target

    def _check_artifact_type_needed(
        self, body: dict, file: str, config_ref: Ref | None
    ) -> None:
        if config_ref is None or config_ref.media_type != mt.OCI_EMPTY:
            return
        if "artifactType" not in body:
            self.findings.error(
                file,
                "$",
                "artifact-type-missing",
                f"manifest config is the empty descriptor ({mt.OCI_EMPTY}), so "
                "artifactType must say what the artifact is",
            )

    def _check_layers(self, body: dict, file: str) -> list[Ref | None] | None:
        """Check each layer descriptor; return None when ``layers`` is not an array."""
        values = self._required_array(body, "layers", file)
        if not isinstance(body.get("layers"), list):
            return None
        if not values:
            self.findings.warning(
                file,
                "$.layers",
                "layers-empty",
                "manifest has no layers; for portability it should have at least one",
            )
        layers = []
        for i, value in enumerate(values):
            ref = check_descriptor(self.findings, value, file, f"$.layers[{i}]")
            layers.append(ref)
            if ref is None:
                continue
            foreign = bool(ref.urls) or (
                ref.media_type is not None and mt.is_non_distributable(ref.media_type)
            )
            self.blobs.verify(ref, absent_ok=foreign)
        return layers

    def _check_config_ref(self, ref: Ref | None) -> ImageConfig | None:
        if ref is None:
            return None
        entry = self.blobs.verify(ref)
        # Content of an unknown config media type must not be parsed.
        if entry is None or ref.media_type not in mt.IMAGE_CONFIG_TYPES:
            return None
        if self._declared_too_large(ref):
            return None
        if ref.digest in self._configs:
            return self._configs[ref.digest]
        body = self._read_blob_json(ref)
        config = (
            None
            if body is None
            else check_image_config(self.findings, body, ref.blob_file)
        )
        self._configs[ref.digest] = config
        return config

    def _compare_diff_ids(
        self, config_ref: Ref, config: ImageConfig, layers: list, file: str
    ) -> None:
        config_file = config_ref.blob_file
        if len(config.diff_ids) != len(layers):
            self.findings.error(
                config_file,
                "$.rootfs.diff_ids",
                "diff-ids-count",
                f"config lists {len(config.diff_ids)} diff_ids but manifest {file} "
                f"has {len(layers)} layers; there must be one per layer",
            )
            return
        if not self.deep:
            return
        for i, (layer, diff_id) in enumerate(zip(layers, config.diff_ids)):
            if layer is None or diff_id is None or layer.key is None:
                continue
            self._deep_check_layer(layer, diff_id, config_file, i)

    def _deep_check_layer(
        self, layer: Ref, diff_id: str, config_file: str, i: int
    ) -> None:
        # A layer shared by several images is decompressed once per diff_id.
        key = (layer.digest, diff_id, layer.media_type or "")
        if key in self._layers_checked or layer.media_type is None:
            return
        self._layers_checked.add(key)
        if self.blobs.blob(layer.key).entry.status != fs.OK:
            return
        fd, _ = self.files.open(("blobs", layer.algorithm, layer.encoded))
        if fd is None:
            return
        with os.fdopen(fd, "rb") as stream:
            check_layer(
                self.findings,
                stream,
                layer,
                diff_id,
                config_file,
                f"$.rootfs.diff_ids[{i}]",
            )

    # Following descriptors

    def _follow(self, ref: Ref, depth: int) -> Target | None:
        """Verify the blob a manifest-list entry or subject names and check its body."""
        if ref.media_type in mt.INDEX_TYPES:
            kind = "index"
        elif ref.media_type in mt.MANIFEST_TYPES:
            kind = "manifest"
        else:
            self.blobs.verify(ref)
            if ref.media_type is not None:
                self.findings.warning(
                    ref.file,
                    child_path(ref.path, "mediaType"),
                    "media-type-unknown",
                    f"media type {ref.media_type!r} is not an image index or "
                    "manifest this checker knows, so its content is not checked",
                )
            return None

        if self.blobs.verify(ref) is None:
            return None
        if ref.digest in self._stack:
            self.findings.error(
                ref.file,
                child_path(ref.path, "digest"),
                "index-cycle",
                f"{ref.digest} refers back to itself through nested descriptors",
            )
            return None
        if depth + 1 > MAX_INDEX_DEPTH:
            self.findings.error(
                ref.file,
                ref.path,
                "index-depth-exceeded",
                f"descriptors nest deeper than {MAX_INDEX_DEPTH} levels; "
                f"{ref.digest} is not checked",
            )
            return None
        return self._check_body(ref, kind, depth + 1)

    def _check_body(self, ref: Ref, kind: str, depth: int) -> Target | None:
        """Check the body ``ref`` names as an index or manifest, once per digest."""
        if self._declared_too_large(ref):
            return None
        memo = (ref.digest, kind)
        if memo in self._targets:
            self._compare_body_media_type(ref, self._own_types.get(ref.digest))
            return self._targets[memo]

        # A digest read before under another kind is parsed again quietly,
        # because its JSON problems were reported the first time.
        seen = ref.digest in self._own_types
        body = self._read_blob_json(ref, report=not seen)
        if body is None:
            self._own_types[ref.digest] = None
            self._targets[memo] = None
            return None
        self._own_types[ref.digest] = body.get("mediaType")
        self._compare_body_media_type(ref, body.get("mediaType"))

        self._stack.append(ref.digest)
        try:
            if kind == "index":
                target = self._check_index(body, ref.blob_file, depth, top=False)
            else:
                target = self._check_manifest(body, ref.blob_file, depth)
        finally:
            self._stack.pop()
        target.algorithms.add(ref.algorithm)
        self._targets[memo] = target
        return target

    def _compare_body_media_type(self, ref: Ref, own: object) -> None:
        if isinstance(own, str) and own != ref.media_type:
            self.findings.error(
                ref.blob_file,
                "$.mediaType",
                "media-type-mismatch",
                f"body declares mediaType {own!r} but {ref.file} {ref.path} "
                f"references it as {ref.media_type!r}",
            )

    def _check_subject(self, body: dict, file: str, depth: int) -> None:
        if "subject" not in body:
            return
        ref = check_descriptor(self.findings, body["subject"], file, "$.subject")
        if ref is None or ref.key is None:
            return
        if self.files.stat(("blobs", *ref.key)).status == fs.MISSING:
            self.findings.warning(
                file,
                "$.subject",
                "subject-absent",
                f"subject {ref.digest} is not in this layout; referrers may "
                "point at images held elsewhere",
            )
            return
        self._follow(ref, depth)

    def _declared_too_large(self, ref: Ref) -> bool:
        if ref.size is None or ref.size <= MAX_JSON_BYTES:
            return False
        self.findings.error(
            ref.file,
            child_path(ref.path, "size"),
            "json-too-large",
            f"descriptor size {ref.size} exceeds {MAX_JSON_BYTES} bytes, the "
            f"maximum this checker reads of a manifest, index or config",
        )
        return True

    def _read_blob_json(self, ref: Ref, report: bool = True) -> dict | None:
        data, _ = self.files.read(("blobs", *ref.key), MAX_JSON_BYTES)
        if data is None:
            return None
        if not report:
            return self._parse_json(ref.blob_file, data, Findings())
        return self._parse_json(ref.blob_file, data, self.findings)

    # Small shared checks

    def _check_schema_version(self, body: dict, file: str) -> None:
        version = body.get("schemaVersion")
        if "schemaVersion" not in body:
            self.findings.error(
                file,
                "$",
                "schema-version-invalid",
                "schemaVersion is missing; it must be 2",
            )
        elif type(version) is not int or version != 2:
            self.findings.error(
                file,
                "$.schemaVersion",
                "schema-version-invalid",
                f"schemaVersion is {short(version)}; it must be the integer 2",
            )

    def _check_own_media_type(
        self, body: dict, file: str, required: str | None
    ) -> None:
        if "mediaType" not in body:
            self.findings.warning(
                file,
                "$",
                "media-type-missing",
                "body has no mediaType; it should state its own media type",
            )
            return
        own = body["mediaType"]
        if not isinstance(own, str) or not own:
            self.findings.error(
                file,
                "$.mediaType",
                "media-type-invalid",
                f"mediaType is {short(own)}, not a media type",
            )
        elif required is not None and own != required:
            self.findings.error(
                file,
                "$.mediaType",
                "media-type-mismatch",
                f"{file} declares mediaType {own!r}; it must be {required!r}",
            )

    def _required_array(self, body: dict, key: str, file: str) -> list:
        if key not in body:
            self.findings.error(
                file,
                "$",
                "field-missing",
                f"{key!r} is missing; it is a required array",
            )
            return []
        value = body[key]
        if not isinstance(value, list):
            self.findings.error(
                file,
                f"$.{key}",
                "field-invalid",
                f"{key} is {short(value)}, not an array",
            )
            return []
        return value
