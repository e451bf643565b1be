"""Make archives of test images with the real skopeo, as a user would.

skopeo is required: these helpers fail, never skip, when it is missing,
because the archive formats are only trustworthy when a real tool writes them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def run_skopeo(*args: str) -> None:
    """Run ``skopeo --insecure-policy ARGS`` and fail with its stderr if it fails."""
    binary = shutil.which("skopeo")
    assert binary, "skopeo is required: install it with 'apt-get install skopeo'"
    result = subprocess.run(
        [binary, "--insecure-policy", *map(str, args)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed: {result.stderr}"


def docker_archive(layout: Path, ref: str, output: Path, repo_tag: str) -> Path:
    """Export ``layout:ref`` as a docker-archive tar tagged ``repo_tag``."""
    run_skopeo("copy", f"oci:{layout}:{ref}", f"docker-archive:{output}:{repo_tag}")
    return output


def oci_archive(layout: Path, ref: str, output: Path, *, all_platforms: bool) -> Path:
    """Export ``layout:ref`` as an oci-archive tar that keeps the ref name."""
    multi_arch = ["--multi-arch=all"] if all_platforms else []
    run_skopeo(
        "copy", *multi_arch, f"oci:{layout}:{ref}", f"oci-archive:{output}:{ref}"
    )
    return output
