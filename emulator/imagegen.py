"""Build real OCI images from Debian packages and PyPI wheels.

The images hold real software so that scanners find real packages in them:

- layer 1: Debian packages fetched with ``apt-get download`` and unpacked with
  ``dpkg-deb -x``, plus the dpkg database a scanner reads
  (``/var/lib/dpkg/status`` and ``/var/lib/dpkg/info/<package>.list``,
  ``.md5sums``, ``.conffiles``);
- layer 2: pure-Python wheels fetched with ``pip download`` and unpacked into
  ``/usr/lib/python3/dist-packages`` with their ``.dist-info`` metadata;
- layer 3: ``/etc/ocilayout-platform``, a one-line marker naming the
  platform, so each platform's image has a digest of its own.

Every platform gets the same packages, those of the machine's own
architecture; only the config and the marker layer differ between platforms.

Downloads are cached in ``$OCILAYOUT_CACHE_DIR``, by default
``<repository>/.cache/ocilayout-demo``, so only the first run needs the
package registries. Layers are deterministic: entries sorted, owner root,
mtime 0, and gzip headers with mtime 0, so the same packages give the same
digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform as host
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ocilayout import mediatypes
from ocilayout.errors import OCILayoutError, UsageError

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
REFERENCE_DIGEST_ANNOTATION = "vnd.docker.reference.digest"
IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
IN_TOTO_PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
SPDX_PREDICATE_TYPE = "https://spdx.dev/Document"
SPDX_MEDIA_TYPE = "application/spdx+json"

CACHE_ENVIRONMENT_VARIABLE = "OCILAYOUT_CACHE_DIR"
# Every timestamp in generated images, so that builds are reproducible.
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"
PYTHON_SITE = "usr/lib/python3/dist-packages"

# Small packages of the Debian release the machine uses; versions follow the
# machine's apt package lists at the time of the first download.
DEBIAN_PACKAGES = {
    "small": ("base-files", "netbase"),
    "demo": (
        "base-files",
        "netbase",
        "debianutils",
        "sensible-utils",
        "ncurses-base",
        "zlib1g",
        "liblz4-1",
        "libzstd1",
    ),
}
# Pinned pure-Python wheels, so the content and digests stay the same.
WHEELS = {
    "small": ("six==1.16.0", "idna==3.6"),
    "demo": (
        "six==1.16.0",
        "idna==3.6",
        "certifi==2023.7.22",
        "urllib3==1.26.18",
        "packaging==23.2",
    ),
}
COMPRESSIONS = ("gzip", "zstd", "tar")
_LAYER_MEDIA_TYPES = {
    "gzip": mediatypes.OCI_LAYER_GZIP,
    "zstd": mediatypes.OCI_LAYER_ZSTD,
    "tar": mediatypes.OCI_LAYER_TAR,
}
_OCI_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class DownloadError(OCILayoutError):
    """A package download command failed, so the image cannot be built."""

    def __init__(self, message: str, command: Sequence[str]):
        super().__init__(message)
        self.command = list(command)


@dataclass(frozen=True)
class Package:
    """One real package placed in an image."""

    kind: str  # "deb" or "wheel"
    name: str
    version: str
    architecture: str = "all"

    @property
    def purl(self) -> str:
        if self.kind == "deb":
            return f"pkg:deb/debian/{self.name}@{self.version}?arch={self.architecture}"
        return f"pkg:pypi/{self.name.lower()}@{self.version}"


@dataclass(frozen=True)
class ImageResult:
    """Location, digests and packages of an image written by ``make_image``."""

    layout: Path
    ref: str
    digest: str
    media_type: str
    manifests: dict[str, str]
    attestations: dict[str, str] = field(default_factory=dict)
    packages: tuple[Package, ...] = ()

    @property
    def package_count(self) -> int:
        return len(self.packages)

    @property
    def spec(self) -> str:
        """The source spec ``<layout>:<ref>`` that selects this image."""
        return f"{self.layout}:{self.ref}"

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": str(self.layout),
            "ref": self.ref,
            "digest": self.digest,
            "mediaType": self.media_type,
            "manifests": self.manifests,
            "attestations": self.attestations,
            "packageCount": self.package_count,
            "packages": [package.purl for package in self.packages],
        }


# Platforms


def host_platform() -> str:
    """Return this machine's platform in OCI spelling, e.g. ``linux/amd64``."""
    machine = host.machine().lower()
    architecture = _OCI_ARCHITECTURES.get(machine, machine)
    if architecture == "arm64":
        return "linux/arm64/v8"
    if architecture == "arm":
        return "linux/arm/v6" if machine == "armv6l" else "linux/arm/v7"
    return f"linux/{architecture}"


def parse_platform(text: str) -> dict[str, str]:
    """Parse ``os/architecture[/variant]`` into an OCI platform object."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(
            f"invalid platform {text!r}: expected os/architecture[/variant], "
            f"such as linux/arm64/v8"
        )
    platform = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        platform["variant"] = parts[2]
    return platform


# Downloads


def cache_directory() -> Path:
    """Return the download cache: $OCILAYOUT_CACHE_DIR or <repo>/.cache/..."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[1] / ".cache" / "ocilayout-demo"


def fetch_debs(names: Iterable[str], cache: Path) -> list[Path]:
    """Return cached .deb files for ``names``, downloading missing ones."""
    folder = cache / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [name for name in names if not _cached_deb(folder, name)]
    if missing:
        command = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *missing]
        _download_into(folder, command, "*.deb")
    return [_cached_deb(folder, name) for name in names]


def _cached_deb(folder: Path, name: str) -> Path | None:
    found = sorted(folder.glob(f"{name}_*.deb"))
    return found[-1] if found else None


def fetch_wheels(requirements: Iterable[str], cache: Path) -> list[Path]:
    """Return cached wheels for pinned ``name==version`` requirements."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if not _cached_wheel(folder, r)]
    if missing:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps",
            "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
            "--dest", ".", *missing,
        ]  # fmt: skip
        _download_into(folder, command, "*.whl")
    return [_cached_wheel(folder, r) for r in requirements]


def _cached_wheel(folder: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    if not version:
        raise UsageError(f"wheel requirement {requirement!r} must pin name==version")
    stem = name.lower().replace("-", "_").replace(".", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    return found[-1] if found else None


def _download_into(folder: Path, command: list[str], pattern: str) -> None:
    """Run a download command in a scratch folder, then move files into place.

    Files appear in the cache only once complete, so an interrupted download
    never leaves a truncated package that later runs would use.
    """
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
        try:
            result = subprocess.run(
                command, cwd=scratch, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise DownloadError(
                f"cannot run {' '.join(command)}: {exc.strerror}", command
            ) from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise DownloadError(
                f"'{' '.join(command)}' failed with exit code {result.returncode}: "
                f"{' | '.join(detail)}. It needs network access to the package "
                f"registry (and, for apt-get, package lists from 'apt-get update'); "
                f"files already in {folder} are reused without it.",
                command,
            )
        for downloaded in Path(scratch).glob(pattern):
            os.replace(downloaded, folder / downloaded.name)


# Root filesystems


def unpack_debs(debs: Sequence[Path], root: Path) -> list[Package]:
    """Unpack .deb files into ``root`` and write the dpkg database for them."""
    info = root / "var/lib/dpkg/info"
    _ensure_directory(info)
    statuses = []
    packages = []
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        fields = _control_fields(deb)
        control = _control_files(deb)
        name = fields["Package"]
        info_name = name
        if fields.get("Multi-Arch") == "same":
            info_name = f"{name}:{fields['Architecture']}"

        _write_file(info / f"{info_name}.list", _file_list(deb).encode())
        for part in ("md5sums", "conffiles"):
            if part in control:
                _write_file(info / f"{info_name}.{part}", control[part])
        statuses.append((name, _status_entry(fields, control, root)))
        packages.append(
            Package("deb", name, fields["Version"], fields.get("Architecture", "all"))
        )

    status = "\n".join(entry for _, entry in sorted(statuses))
    _write_file(root / "var/lib/dpkg/status", status.encode())
    return packages


def _ensure_directory(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0755, whatever the umask."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
        folder.chmod(0o755)


def _write_file(path: Path, data: bytes) -> None:
    _ensure_directory(path.parent)
    path.write_bytes(data)
    path.chmod(0o644)


def _run(command: list[str]) -> bytes:
    try:
        result = subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise OCILayoutError(f"cannot run {command[0]}: {exc.strerror}") from exc
    if result.returncode != 0:
        raise OCILayoutError(
            f"'{' '.join(command)}' failed with exit code {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout


def _control_fields(deb: Path) -> dict[str, str]:
    """Return the control fields of ``deb`` in their original order."""
    text = _run(["dpkg-deb", "-f", str(deb)]).decode()
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            fields[last] += "\n" + line
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _control_files(deb: Path) -> dict[str, bytes]:
    data = _run(["dpkg-deb", "--ctrl-tarfile", str(deb)])
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[PurePosixPath(member.name).name] = tar.extractfile(member).read()
    return files


def _file_list(deb: Path) -> str:
    """Return the dpkg ``.list`` text: every path the package ships, in order."""
    data = _run(["dpkg-deb", "--fsys-tarfile", str(deb)])
    lines = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            path = "/" + member.name.removeprefix("./").rstrip("/")
            lines.append("/." if path == "/" else path)
    return "".join(line + "\n" for line in lines)


def _status_entry(fields: dict[str, str], control: dict[str, bytes], root: Path) -> str:
    lines = [f"Package: {fields['Package']}", "Status: install ok installed"]
    for key, value in fields.items():
        if key not in ("Package", "Description"):
            lines.append(f"{key}: {value}")
    conffiles = control.get("conffiles", b"").decode().split()
    if conffiles:
        lines.append("Conffiles:")
        for path in conffiles:
            digest = hashlib.md5((root / path.lstrip("/")).read_bytes()).hexdigest()
            lines.append(f" {path} {digest}")
    if "Description" in fields:
        lines.append(f"Description: {fields['Description']}")
    return "\n".join(lines) + "\n"


def unpack_wheels(wheels: Sequence[Path], root: Path) -> list[Package]:
    """Unpack wheels into ``root/usr/lib/python3/dist-packages``."""
    site = root / PYTHON_SITE
    _ensure_directory(site)
    packages = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for entry in archive.infolist():
                _extract_wheel_entry(archive, entry, site)
        name, version = wheel.name.split("-")[:2]
        packages.append(Package("wheel", name, version))
    return packages


def _extract_wheel_entry(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, site: Path
) -> None:
    parts = PurePosixPath(entry.filename).parts
    if entry.is_dir() or not parts:
        return
    if any(part in ("", ".", "..") for part in parts) or entry.filename.startswith("/"):
        raise UsageError(f"unsafe path {entry.filename!r} in wheel {archive.filename}")
    if parts[0].endswith(".data"):
        # Only library code is installed. NOTE: scripts, headers and data
        # files of a wheel are skipped; the pinned wheels have none.
        if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
            return
        parts = parts[2:]

    _write_file(site.joinpath(*parts), archive.read(entry))


# Layers


def tar_directory(root: Path) -> bytes:
    """Return a deterministic tar of ``root``'s contents, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk_sorted(root):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = EPOCH
            if info.isreg():
                with open(path, "rb") as stream:
                    tar.addfile(info, stream)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _walk_sorted(root: Path) -> Iterable[Path]:
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        yield entry
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk_sorted(entry)


def compress(data: bytes, compression: str) -> bytes:
    """Compress a layer tar: gzip with mtime 0, zstd, or ``tar`` for none."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard  # optional dependency, needed only for zstd layers

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "tar":
        return data
    raise UsageError(
        f"invalid compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
    )


# Layouts


class LayoutWriter:
    """Writes blobs into an OCI layout directory and keeps its index.json."""

    def __init__(self, path: Path):
        self.path = path
        self.blobs = path / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        layout_file = path / "oci-layout"
        if not layout_file.exists():
            layout_file.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def add_blob(self, media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
        """Store ``data`` and return its descriptor with ``extra`` fields."""
        hex_digest = hashlib.sha256(data).hexdigest()
        target = self.blobs / hex_digest
        if not target.exists():
            temporary = target.with_name(f".{hex_digest}.partial")
            temporary.write_bytes(data)
            os.replace(temporary, target)
        descriptor = {
            "mediaType": media_type,
            "digest": f"sha256:{hex_digest}",
            "size": len(data),
        }
        descriptor.update(extra)
        return descriptor

    def add_json(self, media_type: str, document: dict[str, Any], **extra: Any):
        body = json.dumps(document, separators=(",", ":")).encode()
        return self.add_blob(media_type, body, **extra)

    def set_ref(self, descriptor: dict[str, Any], ref: str) -> None:
        """Point ``ref`` at ``descriptor`` in index.json, replacing an old entry."""
        index_path = self.path / "index.json"
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
        if index_path.exists():
            index = json.loads(index_path.read_text())
        entries = [
            entry
            for entry in index.get("manifests", [])
            if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) != ref
        ]
        entry = dict(descriptor)
        entry["annotations"] = {
            **entry.get("annotations", {}),
            REF_NAME_ANNOTATION: ref,
        }
        entries.append(entry)
        index["manifests"] = entries
        temporary = index_path.with_name(".index.json.partial")
        temporary.write_text(json.dumps(index, separators=(",", ":")))
        os.replace(temporary, index_path)


@dataclass
class _Content:
    """Layers shared by every platform of one image, already stored as blobs."""

    layers: list[dict[str, Any]]
    diff_ids: list[str]
    history: list[dict[str, Any]]
    packages: list[Package]


def make_image(
    out_dir: str | os.PathLike[str],
    platforms: Sequence[str] = ("linux/amd64",),
    attestation: bool = False,
    size: str = "small",
    ref: str = "latest",
    *,
    compression: str = "gzip",
    cache: str | os.PathLike[str] | None = None,
) -> ImageResult:
    """Write a real image into the OCI layout ``out_dir`` under ``ref``.

    One platform without attestations gives an image manifest. Several
    platforms, or attestations, give an OCI image index with one manifest per
    platform. With ``attestation``, each platform also gets a buildx-style
    attestation manifest containing an in-toto SPDX statement. ``out_dir`` must be
    absent, empty, or an existing OCI layout, to which the image is added
    (replacing any entry with the same ``ref``).
    """
    if size not in DEBIAN_PACKAGES:
        raise UsageError(f"invalid size {size!r}: use 'small' or 'demo'")
    if not platforms:
        raise UsageError("no platform given: pass at least one, e.g. linux/amd64")
    parsed = [parse_platform(text) for text in platforms]
    compress(b"", compression)  # rejects an unknown compression early
    layout_path = _prepare_output(Path(out_dir))
    cache_path = Path(cache) if cache is not None else cache_directory()

    # Fetch packages and build the shared layers.
    debs = fetch_debs(DEBIAN_PACKAGES[size], cache_path)
    wheels = fetch_wheels(WHEELS[size], cache_path)
    writer = LayoutWriter(layout_path)
    content = _build_shared_layers(writer, debs, wheels, compression)

    # One manifest per platform, plus its attestation when requested.
    manifests: dict[str, str] = {}
    attestations: dict[str, str] = {}
    image_descriptors = []
    attestation_descriptors = []
    for text, platform in zip(platforms, parsed):
        descriptor = _write_platform_image(writer, content, text, platform, compression)
        image_descriptors.append(descriptor)
        manifests[text] = descriptor["digest"]
        if attestation:
            statement = _attestation(writer, content, descriptor, text, ref)
            attestation_descriptors.append(statement)
            attestations[text] = statement["digest"]

    # The top: the manifest itself, or an index over all of them.
    if len(image_descriptors) == 1 and not attestation:
        top = image_descriptors[0]
    else:
        index = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": image_descriptors + attestation_descriptors,
        }
        top = writer.add_json(mediatypes.OCI_INDEX, index)
    writer.set_ref(top, ref)

    return ImageResult(
        layout=layout_path,
        ref=ref,
        digest=top["digest"],
        media_type=top["mediaType"],
        manifests=manifests,
        attestations=attestations,
        packages=tuple(content.packages),
    )


def _prepare_output(path: Path) -> Path:
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"output {path} exists and is not a directory")
        is_layout = (path / "oci-layout").is_file()
        if any(path.iterdir()) and not is_layout:
            raise UsageError(
                f"output {path} is neither empty nor an OCI layout; "
                f"choose a new directory"
            )
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _build_shared_layers(
    writer: LayoutWriter, debs: list[Path], wheels: list[Path], compression: str
) -> _Content:
    media_type = _LAYER_MEDIA_TYPES[compression]
    content = _Content([], [], [], [])
    steps = [
        ("debs", unpack_debs, debs, "apt-get download && dpkg-deb -x"),
        ("wheels", unpack_wheels, wheels, "pip download && unzip into dist-packages"),
    ]
    with tempfile.TemporaryDirectory(prefix="ocilayout-imagegen-") as scratch:
        for name, unpack, files, created_by in steps:
            root = Path(scratch) / name
            root.mkdir()
            content.packages += unpack(files, root)
            tar = tar_directory(root)
            names = " ".join(path.name for path in files)
            content.layers.append(
                writer.add_blob(media_type, compress(tar, compression))
            )
            content.diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
            content.history.append(
                {"created": CREATED, "created_by": f"{created_by}: {names}"}
            )
    return content


def _write_platform_image(
    writer: LayoutWriter,
    content: _Content,
    text: str,
    platform: dict[str, str],
    compression: str,
) -> dict[str, Any]:
    marker = tar_directory_from_files({"etc/ocilayout-platform": f"{text}\n".encode()})
    layer = writer.add_blob(
        _LAYER_MEDIA_TYPES[compression], compress(marker, compression)
    )
    diff_ids = content.diff_ids + ["sha256:" + hashlib.sha256(marker).hexdigest()]
    history = content.history + [
        {"created": CREATED, "created_by": f"write /etc/ocilayout-platform ({text})"}
    ]

    config = {
        **platform,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_descriptor = writer.add_json(mediatypes.OCI_CONFIG, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": config_descriptor,
        "layers": content.layers + [layer],
    }
    return writer.add_json(mediatypes.OCI_MANIFEST, manifest, platform=platform)


def tar_directory_from_files(files: dict[str, bytes]) -> bytes:
    """Return a deterministic tar holding ``files`` and their parent folders."""
    with tempfile.TemporaryDirectory(prefix="ocilayout-imagegen-") as scratch:
        root = Path(scratch)
        for name, data in files.items():
            _write_file(root / name, data)
        return tar_directory(root)


def _attestation(
    writer: LayoutWriter,
    content: _Content,
    image: dict[str, Any],
    platform_text: str,
    ref: str,
) -> dict[str, Any]:
    """Write a buildx-style attestation manifest and return its descriptor."""
    statement = json.dumps(
        _in_toto_statement(content.packages, image, platform_text, ref), indent=2
    ).encode()
    layer = writer.add_blob(
        IN_TOTO_MEDIA_TYPE,
        statement,
        annotations={IN_TOTO_PREDICATE_ANNOTATION: SPDX_PREDICATE_TYPE},
    )
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": writer.add_json(mediatypes.OCI_CONFIG, config),
        "layers": [layer],
    }
    return writer.add_json(
        mediatypes.OCI_MANIFEST,
        manifest,
        platform={"architecture": "unknown", "os": "unknown"},
        annotations={
            REFERENCE_DIGEST_ANNOTATION: image["digest"],
            REFERENCE_TYPE_ANNOTATION: "attestation-manifest",
        },
    )


def _in_toto_statement(
    packages: Sequence[Package], image: dict[str, Any], platform_text: str, ref: str
) -> dict[str, Any]:
    spdx_packages = [
        {
            "name": package.name,
            "SPDXID": f"SPDXRef-Package-{package.kind}-{package.name}",
            "versionInfo": package.version,
            "downloadLocation": "NOASSERTION",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": package.purl,
                }
            ],
        }
        for package in packages
    ]
    algorithm, _, hex_digest = image["digest"].partition(":")
    platform_query = platform_text.replace("/", "%2F")
    return {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": SPDX_PREDICATE_TYPE,
        "subject": [
            {
                "name": f"pkg:docker/ocilayout-demo@{ref}?platform={platform_query}",
                "digest": {algorithm: hex_digest},
            }
        ],
        "predicate": {
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": f"ocilayout-demo:{ref} {platform_text}",
            "documentNamespace": f"urn:ocilayout-demo:{hex_digest}",
            "creationInfo": {
                "created": CREATED,
                "creators": ["Tool: ocilayout-emulator"],
            },
            "packages": spdx_packages,
        },
    }


def wrap_in_index(layout: str | os.PathLike[str], ref: str, new_ref: str) -> str:
    """Add an index whose only child is the entry ``ref``; name it ``new_ref``.

    This makes an index that points at another index (or a manifest), which
    some registries hold. Returns the new index's digest.
    """
    path = Path(layout)
    entry = _layout_entry(path, ref)
    child = {k: v for k, v in entry.items() if k != "annotations"}
    writer = LayoutWriter(path)
    outer = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [child],
    }
    descriptor = writer.add_json(mediatypes.OCI_INDEX, outer)
    writer.set_ref(descriptor, new_ref)
    return descriptor["digest"]


def add_sbom_referrer(
    layout: str | os.PathLike[str], subject_ref: str, new_ref: str
) -> str:
    """Add an SPDX SBOM artifact whose ``subject`` is the entry ``subject_ref``.

    The artifact is an OCI 1.1 manifest with ``artifactType``
    ``application/spdx+json``, the empty config and one SBOM layer, the shape
    ``oras attach`` and ``cosign attach sbom`` push. It gets the ref name
    ``new_ref``; returns its digest.
    """
    path = Path(layout)
    subject = _layout_entry(path, subject_ref)
    sbom = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom of {subject['digest']}",
        "documentNamespace": f"urn:ocilayout-demo:sbom:{subject['digest']}",
        "creationInfo": {"created": CREATED, "creators": ["Tool: ocilayout-emulator"]},
        "packages": [],
    }
    writer = LayoutWriter(path)
    empty = writer.add_blob(mediatypes.OCI_EMPTY, b"{}")
    layer = writer.add_json(SPDX_MEDIA_TYPE, sbom)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": SPDX_MEDIA_TYPE,
        "config": empty,
        "layers": [layer],
        "subject": {key: subject[key] for key in ("mediaType", "digest", "size")},
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    descriptor = writer.add_json(
        mediatypes.OCI_MANIFEST, manifest, artifactType=SPDX_MEDIA_TYPE
    )
    writer.set_ref(descriptor, new_ref)
    return descriptor["digest"]


def _layout_entry(path: Path, ref: str) -> dict[str, Any]:
    index = json.loads((path / "index.json").read_text())
    matches = [
        entry
        for entry in index.get("manifests", [])
        if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == ref
    ]
    if len(matches) != 1:
        raise UsageError(
            f"layout {path} has {len(matches)} entries named {ref!r}; expected one"
        )
    return matches[0]
