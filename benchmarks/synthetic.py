"""Synthetic images of random, incompressible blobs, pushed into an emulator store.

Layers are random bytes, not tar archives, labelled with the plain tar
media type so that their diff_id equals their digest and the config is
consistent. They serve hashing and placement benchmarks only: a scanner or
an unpacker would reject them, and ``--verify deep`` would hash them as
uncompressed tars.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from emulator.push import push
from emulator.store import EmulatorStore
from ocilayout import mediatypes as mt

CHUNK_BYTES = 1 << 20
REPOSITORY_KEY = "bench-local"
IMAGE_NAME = "bench/random"


@dataclass(frozen=True)
class SyntheticImage:
    """An image written as an OCI layout and pushed into a store."""

    layout: Path
    ref: str
    store: Path
    tag: str
    digest: str
    blob_files: tuple[Path, ...]
    total_bytes: int

    def build_args(self) -> list[str]:
        """Return the ``ocilayout build`` arguments that select this image."""
        return ["--store", str(self.store), "--image", IMAGE_NAME, "--tag", self.tag]


def write_random_blob(folder: Path, size: int, rng: random.Random) -> dict:
    """Write ``size`` random bytes as a blob of ``folder`` and return its descriptor."""
    hasher = hashlib.sha256()
    temporary = folder / f".partial-{rng.getrandbits(64):016x}"
    with open(temporary, "wb") as stream:
        remaining = size
        while remaining:
            chunk = rng.randbytes(min(CHUNK_BYTES, remaining))
            hasher.update(chunk)
            stream.write(chunk)
            remaining -= len(chunk)
    digest = hasher.hexdigest()
    os.replace(temporary, folder / digest)
    return {"mediaType": mt.OCI_LAYER_TAR, "digest": f"sha256:{digest}", "size": size}


def make_synthetic_image(
    root: Path, layer_sizes: list[int], *, seed: int, tag: str = "bench"
) -> SyntheticImage:
    """Write an image with random layers of ``layer_sizes`` and push it.

    The OCI layout is ``root/layout`` (ref ``tag``), the store ``root/store``.
    """
    rng = random.Random(seed)
    layout = root / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = [write_random_blob(blobs, size, rng) for size in layer_sizes]

    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layers]},
        "config": {},
    }
    config_descriptor = _write_json(blobs, mt.OCI_CONFIG, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layers,
    }
    top = _write_json(blobs, mt.OCI_MANIFEST, manifest)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [top]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    store = EmulatorStore.init(root / "store")
    digest = push(store, REPOSITORY_KEY, IMAGE_NAME, tag, f"oci:{layout}:{tag}")
    storage = store.repository(REPOSITORY_KEY).storage_path / "oci-blobs"
    files = tuple(storage / d["digest"] for d in [config_descriptor, *layers])
    return SyntheticImage(
        layout=layout,
        ref=tag,
        store=store.root,
        tag=tag,
        digest=digest,
        blob_files=files,
        total_bytes=sum(f.stat().st_size for f in files),
    )


def _write_json(folder: Path, media_type: str, document: dict) -> dict:
    body = json.dumps(document, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    (folder / digest).write_bytes(body)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(body)}
