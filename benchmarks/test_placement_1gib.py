"""A 1 GiB image of 10 blobs: ocilayout builds against hashing and copying tools.

The image has 9 random layers and a config (10 blobs, 1 GiB in all). Its
layers are random bytes labelled as plain tar, so builds here never use
``--verify deep``. Every ``ocilayout build`` is a whole process, startup
included. "Cold" means an empty verification cache (a fresh ``--cache-dir``
per round); the page cache is warm in every case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    Baselines,
    Command,
    ocilayout_command,
    read_all,
    record,
    remove,
    require_tool,
    run,
    wait_for_quiet_cpus,
)
from synthetic import SyntheticImage, make_synthetic_image

from ocilayout.cache import VerifyCache, remove_layout

GIB = 1 << 30
LAYERS = 9

# Targets, as ratios of ocilayout's time to a baseline's in the same run.
HARDLINK_VS_OPENSSL = 0.75
COPY_VS_OPENSSL = 1.0
WARM_REBUILD_SECONDS = 0.25
SKOPEO_SPEEDUP = 8.0
HELP_SECONDS = 0.3

# An unverified serial stream copy in Python, the simplest possible placement.
_PYTHON_COPY = """
import os, sys
target = sys.argv[1]
buffer = bytearray(1 << 20)
view = memoryview(buffer)
for path in sys.argv[2:]:
    with open(path, "rb", buffering=0) as source, open(
        os.path.join(target, os.path.basename(path)), "wb", buffering=0
    ) as sink:
        while count := source.readinto(buffer):
            sink.write(view[:count])
"""


@pytest.fixture(scope="module")
def image(bench_root) -> SyntheticImage:
    root = bench_root / "1gib"
    root.mkdir()
    built = make_synthetic_image(root, [GIB // LAYERS] * LAYERS, seed=1)
    read_all(built.blob_files)
    read_all(sorted((built.layout / "blobs" / "sha256").iterdir()))
    yield built
    remove(root)


class Rounds:
    """Fresh output paths and cache folders, one per round."""

    def __init__(self, root: Path, name: str):
        self.root = root / name
        self.root.mkdir()
        self.count = 0

    def next(self) -> tuple[Path, Path]:
        self.count += 1
        output = self.root / f"out-{self.count}"
        cache = self.root / f"cache-{self.count}"
        remove(self.root / f"out-{self.count - 1}")
        remove(self.root / f"cache-{self.count - 1}")
        return output, cache


def openssl(image: SyntheticImage) -> Command:
    binary = require_tool("openssl")
    return Command(lambda: run([binary, "dgst", "-sha256", *image.blob_files]))


def openssl_parallel(image: SyntheticImage) -> Command:
    """One openssl per file, as many at once as CPUs: ``xargs -P``, the
    parallel hashing a shell user would reach for."""
    binary = require_tool("openssl")
    cpus = str(os.cpu_count() or 1)
    files = "\0".join(map(str, image.blob_files)).encode()

    def action() -> None:
        result = subprocess.run(
            ["xargs", "-0", "-P", cpus, "-n", "1", binary, "dgst", "-sha256"],
            input=files,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, "xargs openssl failed"

    return Command(action)


def python_copy(image: SyntheticImage, folder: Path) -> Command:
    def prepare() -> None:
        remove(folder)
        folder.mkdir(parents=True)

    return Command(
        lambda: run([sys.executable, "-c", _PYTHON_COPY, folder, *image.blob_files]),
        prepare,
    )


def cp_r(image: SyntheticImage, folder: Path) -> Command:
    source = image.blob_files[0].parent
    return Command(lambda: run(["cp", "-r", source, folder]), lambda: remove(folder))


def skopeo(image: SyntheticImage, folder: Path) -> Command:
    binary = require_tool("skopeo")
    source = f"oci:{image.layout}:{image.ref}"
    target = f"oci:{folder}:{image.ref}"
    return Command(
        lambda: run([binary, "copy", "-q", source, target]), lambda: remove(folder)
    )


def build_command(image, output, *options) -> list[str]:
    return [
        *ocilayout_command(),
        "build",
        *image.build_args(),
        "-o",
        str(output),
        *options,
    ]


def cold_rounds(benchmark, image, baselines, rounds, name, *options):
    """Time cold builds with ``options``, running the baselines between rounds."""
    paths = Rounds(image.layout.parent, name)

    def setup():
        baselines.run_round()
        output, cache = paths.next()
        os.sync()
        wait_for_quiet_cpus()
        return (build_command(image, output, "--cache-dir", str(cache), *options),), {}

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    remove(paths.root)


def test_cold_hardlink_build(benchmark, image):
    baselines = Baselines(
        {
            "openssl dgst -sha256": openssl(image),
            "openssl dgst -sha256, one per CPU": openssl_parallel(image),
        }
    )

    cold_rounds(benchmark, image, baselines, 7, "hardlink", "--link", "hardlink")

    ratios = record(
        benchmark, "1 GiB, 10 blobs", "cold verified hardlink build", baselines
    )
    assert ratios["openssl dgst -sha256"] <= HARDLINK_VS_OPENSSL


def test_cold_copy_build(benchmark, image):
    scratch = image.layout.parent / "baseline-copies"
    baselines = Baselines(
        {
            "openssl dgst -sha256": openssl(image),
            "python stream copy (unverified)": python_copy(image, scratch / "python"),
            "cp -r": cp_r(image, scratch / "cp"),
        }
    )

    cold_rounds(benchmark, image, baselines, 5, "copy", "--link", "copy", "--no-sync")

    ratios = record(
        benchmark,
        "1 GiB, 10 blobs",
        "cold verified copy build (--no-sync)",
        baselines,
        note="no baseline calls fsync, so neither does this build",
    )
    remove(scratch)
    assert ratios["openssl dgst -sha256"] <= COPY_VS_OPENSSL


def test_cold_copy_build_synced(benchmark, image):
    baselines = Baselines({"openssl dgst -sha256": openssl(image)})

    cold_rounds(benchmark, image, baselines, 3, "copy-synced", "--link", "copy")

    record(
        benchmark,
        "1 GiB, 10 blobs",
        "cold verified copy build (fsync)",
        baselines,
        note="recorded only: includes writing 1 GiB to disk",
    )


def test_warm_rebuild(benchmark, image):
    folder = image.layout.parent / "warm"
    cache_dir = folder / "cache"
    baselines = Baselines({"openssl dgst -sha256": openssl(image)})
    folder.mkdir()
    run(
        build_command(
            image, folder / "out-0", "--cache-dir", str(cache_dir), "--link", "hardlink"
        )
    )
    rounds = iter(range(1, 1000))
    previous = [folder / "out-0"]

    def setup():
        baselines.run_round()
        with VerifyCache(cache_dir) as cache:
            remove_layout(previous[0], cache)
        output = folder / f"out-{next(rounds)}"
        previous[0] = output
        os.sync()
        wait_for_quiet_cpus()
        return (
            build_command(
                image,
                output,
                "--cache-dir",
                str(cache_dir),
                "--link",
                "hardlink",
                "--json",
            ),
        ), {}

    def build(argv):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert '"hashed": true' not in result.stdout, "a warm rebuild hashed a blob"

    benchmark.pedantic(build, setup=setup, rounds=10, iterations=1)
    record(benchmark, "1 GiB, 10 blobs", "warm rebuild (cache hit)", baselines)
    remove(folder)
    assert benchmark.stats.stats.median < WARM_REBUILD_SECONDS


def test_cold_hardlink_vs_skopeo(benchmark, image):
    scratch = image.layout.parent / "skopeo"
    baselines = Baselines({"skopeo copy oci: oci:": skopeo(image, scratch)})

    cold_rounds(benchmark, image, baselines, 3, "hardlink-skopeo", "--link", "hardlink")

    record(
        benchmark,
        "1 GiB, 10 blobs",
        "cold verified hardlink build",
        baselines,
        note="recorded only: the target applies to the build itself, asserted "
        "in test_library_hardlink_build_in_process; this adds interpreter "
        "start-up and imports",
    )
    remove(scratch)


def test_help_startup(benchmark):
    argv = [*ocilayout_command(), "--help"]

    def setup():
        wait_for_quiet_cpus()
        return (argv,), {}

    benchmark.pedantic(run, setup=setup, rounds=10, iterations=1, warmup_rounds=1)

    record(benchmark, "startup", "ocilayout --help")
    assert benchmark.stats.stats.median < HELP_SECONDS


def test_library_hardlink_build_in_process(benchmark, image):
    """The cold verified hardlink build as a library call, against skopeo.

    Hashing 1 GiB bounds any verified build. On a two-CPU machine it takes
    about a ninth of skopeo's time, which leaves too little for a new
    Python process to start and import the CLI (see benchmarks/README.md).
    """
    from ocilayout import build_layout

    folder = image.layout.parent / "in-process"
    folder.mkdir()
    paths = Rounds(folder, "rounds")
    baselines = Baselines(
        {
            "openssl dgst -sha256": openssl(image),
            "skopeo copy oci: oci:": skopeo(image, folder / "skopeo"),
        }
    )

    def setup():
        baselines.run_round()
        output, _ = paths.next()
        os.sync()
        wait_for_quiet_cpus()
        return (), {"output": output}

    def build(output):
        build_layout(
            image.store, output, image="bench/random", tag=image.tag, link="hardlink"
        )

    benchmark.pedantic(build, setup=setup, rounds=5, iterations=1)
    ratios = record(
        benchmark,
        "1 GiB, 10 blobs",
        "build_layout() hardlink, in process",
        baselines,
        note="the build as a scanner's library call runs it: no interpreter "
        "start-up or imports",
    )
    remove(folder)
    assert 1 / ratios["skopeo copy oci: oci:"] >= SKOPEO_SPEEDUP
