"""Shared fixtures: real images built from Debian packages and wheels, and stores.

The images come from ``emulator.imagegen.make_image``. Package downloads are
cached in ``$OCILAYOUT_CACHE_DIR`` (default ``.cache/ocilayout-demo`` in the
repository), so only the first run on a machine needs the package registries.
Each image is built once per test session; tests must not modify the layouts
these fixtures return (copy them first with ``shutil.copytree``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.imagegen import ImageResult, host_platform, make_image
from emulator.push import push
from emulator.store import EmulatorStore

from .imagefactory import docker_archive

# Every layout built by any test, in this process or a child process, is
# validated by ocilayout.check before it appears (see ocilayout/build.py).
os.environ["OCILAYOUT_SELF_CHECK"] = "1"

REPOSITORY_KEY = "docker-local"
IMAGE_NAME = "demo/app"
MULTI_PLATFORMS = ("linux/amd64", "linux/arm64/v8")


@dataclass(frozen=True)
class PushedImage:
    """An image pushed into a test store, with where to find it."""

    store: EmulatorStore
    repo: str
    image: str
    tag: str
    digest: str
    source: ImageResult


@pytest.fixture(scope="session")
def real_image_single(tmp_path_factory) -> ImageResult:
    """A single-platform OCI layout for the host platform, tagged ``latest``."""
    out = tmp_path_factory.mktemp("image-single") / "layout"
    return make_image(out, platforms=[host_platform()])


@pytest.fixture(scope="session")
def real_image_multi(tmp_path_factory) -> ImageResult:
    """An OCI index for linux/amd64 and linux/arm64/v8 with attestations."""
    out = tmp_path_factory.mktemp("image-multi") / "layout"
    return make_image(out, platforms=list(MULTI_PLATFORMS), attestation=True)


@pytest.fixture(scope="session")
def docker_archive_single(real_image_single, tmp_path_factory) -> Path:
    """``real_image_single`` exported by skopeo as a docker-archive tar.

    Its RepoTag is ``demo/app:latest`` (skopeo stores it as
    ``docker.io/demo/app:latest``).
    """
    out = tmp_path_factory.mktemp("docker-archive") / "image.tar"
    return docker_archive(real_image_single.layout, "latest", out, "demo/app:latest")


@pytest.fixture
def store(tmp_path: Path) -> EmulatorStore:
    """A fresh, empty emulator store."""
    return EmulatorStore.init(tmp_path / "store")


@pytest.fixture
def pushed_single(store, real_image_single) -> PushedImage:
    """The single-platform image pushed as ``docker-local`` ``demo/app:single``."""
    return _push(store, real_image_single, "single")


@pytest.fixture
def pushed_multi(store, real_image_multi) -> PushedImage:
    """The multi-platform index pushed as ``docker-local`` ``demo/app:multi``."""
    return _push(store, real_image_multi, "multi")


@pytest.fixture
def pushed_docker(store, docker_archive_single, real_image_single) -> PushedImage:
    """The docker-archive pushed as ``demo/app:docker``: a Docker v2 manifest.

    ``source`` is the OCI image the archive was made from, so it lists the
    same packages; the pushed digest differs from its digest.
    """
    digest = push(store, REPOSITORY_KEY, IMAGE_NAME, "docker", docker_archive_single)
    return PushedImage(
        store, REPOSITORY_KEY, IMAGE_NAME, "docker", digest, real_image_single
    )


def _push(store: EmulatorStore, image: ImageResult, tag: str) -> PushedImage:
    digest = push(store, REPOSITORY_KEY, IMAGE_NAME, tag, image.spec)
    return PushedImage(store, REPOSITORY_KEY, IMAGE_NAME, tag, digest, image)
