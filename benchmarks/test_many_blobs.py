"""An image of 2,000 small blobs: per-blob overhead against hashing and copying.

Layers are random bytes of 1 to 64 KiB, labelled as plain tar (see
synthetic.py), so builds never use ``--verify deep``. No target applies;
the ratios are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

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

BLOBS = 2000

_PYTHON_COPY = """
import os, sys
target = sys.argv[1]
for path in sys.argv[2:]:
    with open(path, "rb") as source, open(
        os.path.join(target, os.path.basename(path)), "wb"
    ) as sink:
        sink.write(source.read())
"""


@pytest.fixture(scope="module")
def image(bench_root) -> SyntheticImage:
    root = bench_root / "many"
    root.mkdir()
    rng = random.Random(2)
    sizes = [rng.randint(1 << 10, 64 << 10) for _ in range(BLOBS - 1)]
    built = make_synthetic_image(root, sizes, seed=2)
    read_all(built.blob_files)
    yield built
    remove(root)


def baselines(image: SyntheticImage) -> Baselines:
    scratch = image.layout.parent / "baseline-copies"
    source = image.blob_files[0].parent

    def fresh(folder):
        def prepare():
            remove(folder)
            folder.mkdir(parents=True)

        return prepare

    return Baselines(
        {
            "openssl dgst -sha256": Command(
                lambda: run(
                    [require_tool("openssl"), "dgst", "-sha256", *image.blob_files]
                )
            ),
            "python copy (unverified)": Command(
                lambda: run(
                    [
                        sys.executable,
                        "-c",
                        _PYTHON_COPY,
                        scratch / "py",
                        *image.blob_files,
                    ]
                ),
                fresh(scratch / "py"),
            ),
            "cp -r": Command(
                lambda: run(["cp", "-r", source, scratch / "cp"]),
                lambda: remove(scratch / "cp"),
            ),
        }
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


@pytest.mark.parametrize("link", ["hardlink", "copy"])
def test_cold_build(benchmark, image, link):
    folder = image.layout.parent / f"cold-{link}"
    folder.mkdir()
    compare = baselines(image)
    rounds = iter(range(1, 1000))
    options = ["--link", link]
    if link == "copy":
        options.append("--no-sync")

    def setup():
        compare.run_round()
        number = next(rounds)
        remove(folder / f"out-{number - 1}")
        os.sync()
        wait_for_quiet_cpus()
        return (
            build_command(
                image,
                folder / f"out-{number}",
                "--cache-dir",
                str(folder / f"cache-{number}"),
                *options,
            ),
        ), {}

    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)

    record(benchmark, "2,000 small blobs", f"cold verified {link} build", compare)
    remove(folder)
    remove(image.layout.parent / "baseline-copies")


def test_warm_rebuild(benchmark, image):
    folder = image.layout.parent / "warm"
    cache_dir = folder / "cache"
    folder.mkdir()
    compare = baselines(image)
    run(
        build_command(
            image, folder / "out-0", "--cache-dir", str(cache_dir), "--link", "hardlink"
        )
    )
    rounds = iter(range(1, 1000))
    previous = [folder / "out-0"]

    def setup():
        compare.run_round()
        with VerifyCache(cache_dir) as cache:
            remove_layout(previous[0], cache)
        previous[0] = folder / f"out-{next(rounds)}"
        os.sync()
        wait_for_quiet_cpus()
        return (
            build_command(
                image,
                previous[0],
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

    benchmark.pedantic(build, setup=setup, rounds=5, iterations=1)

    record(benchmark, "2,000 small blobs", "warm rebuild (cache hit)", compare)
    remove(folder)
    remove(image.layout.parent / "baseline-copies")
