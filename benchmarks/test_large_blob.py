"""One 4 GiB blob: peak memory of ocilayout builds stays flat.

Peak RSS is the ``ru_maxrss`` of the build process, read by a small wrapper
process through ``getrusage(RUSAGE_CHILDREN)``, so no other process's peak
is mixed in. The same builds of a 64 MiB blob show how much of the peak is
the interpreter and its imports rather than the blob. The 4 GiB files are
removed when the module ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import (
    Baselines,
    Command,
    ocilayout_command,
    read_all,
    record,
    record_value,
    remove,
    require_tool,
    run,
    wait_for_quiet_cpus,
)
from synthetic import SyntheticImage, make_synthetic_image

GIB = 1 << 30
MIB = 1 << 20
PEAK_RSS_LIMIT_MIB = 100
# Growth allowed from a 64 MiB blob to a 4 GiB one: the read buffers of the
# worker threads, nothing proportional to the blob.
GROWTH_LIMIT_MIB = 16

_PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""

MODES = {
    "hardlink": ["--link", "hardlink", "--no-cache"],
    "copy": ["--link", "copy", "--no-sync"],
    "hardlink, --verify deep": ["--link", "hardlink", "--no-cache", "--verify", "deep"],
}


def peak_rss_mib(argv: list[str]) -> float:
    """Run ``argv`` and return its peak resident set size in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip()) / 1024


def free_bytes(path) -> int:
    return shutil.disk_usage(path).free


@pytest.fixture(scope="module")
def images(bench_root) -> dict[str, SyntheticImage]:
    needed = 3 * 4 * GIB + 2 * GIB
    if free_bytes(bench_root) < needed:
        raise AssertionError(
            f"the 4 GiB benchmark needs {needed // GIB} GiB free under {bench_root}"
        )
    built = {}
    for name, size in (("small", 64 * MIB), ("large", 4 * GIB)):
        root = bench_root / f"blob-{name}"
        root.mkdir()
        built[name] = make_synthetic_image(root, [size], seed=3)
        read_all(built[name].blob_files)
    yield built
    for image in built.values():
        remove(image.layout.parent)


def build_command(image, output, options) -> list[str]:
    return [
        *ocilayout_command(),
        "build",
        *image.build_args(),
        "-o",
        str(output),
        *options,
    ]


@pytest.mark.parametrize("mode", list(MODES))
def test_peak_memory_flat(benchmark, images, mode):
    options = MODES[mode]
    peaks = {}
    for name, image in images.items():
        output = image.layout.parent / "out"
        remove(output)
        peaks[name] = peak_rss_mib(build_command(image, output, options))
        remove(output)

    large = images["large"]
    output = large.layout.parent / "timed"
    compare = Baselines(
        {
            "openssl dgst -sha256": Command(
                lambda: run(
                    [require_tool("openssl"), "dgst", "-sha256", *large.blob_files]
                )
            )
        }
    )

    def setup():
        compare.run_round()
        remove(output)
        os.sync()
        wait_for_quiet_cpus()
        return (build_command(large, output, options),), {}

    benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    remove(output)

    record(
        benchmark,
        "one 4 GiB blob",
        f"{mode} build",
        compare,
        note="one blob, so hashing runs on one core",
    )
    record_value(
        "one 4 GiB blob", f"{mode} build peak RSS", round(peaks["large"], 1), "MiB"
    )
    record_value(
        "one 64 MiB blob", f"{mode} build peak RSS", round(peaks["small"], 1), "MiB"
    )
    benchmark.extra_info["peak_rss_mib"] = json.dumps(peaks)
    assert peaks["large"] < PEAK_RSS_LIMIT_MIB
    assert peaks["large"] - peaks["small"] < GROWTH_LIMIT_MIB
