"""Helpers shared by the builder's tests: running the CLI and snapshotting a store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m ocilayout ARGS`` in a real process and capture its output."""
    result = subprocess.run(
        [sys.executable, "-m", "ocilayout", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ocilayout {' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def run_json(*args: str) -> tuple[int, dict]:
    result = run_cli(*args, "--json")
    return result.returncode, json.loads(result.stdout)


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """Map every path under ``root`` to (type, mode, content sha256).

    Link counts are left out because a hardlink build adds links on purpose;
    tests that care compare them separately.
    """
    snapshot: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            digest = None
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            snapshot[str(path.relative_to(root))] = (info.st_mode, digest)
    return snapshot


def tool(name: str) -> str:
    """Return the path of a real consumer binary; fail loudly when it is absent."""
    local = BIN / name
    if local.exists():
        return str(local)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    raise AssertionError(
        f"{name} is not installed; run `make test`, which installs it, "
        "instead of calling pytest directly"
    )


def syft_packages(target: str) -> list[dict]:
    """Run the real syft on a source string and return its catalogued packages."""
    result = subprocess.run(
        [tool("syft"), "scan", target, "-o", "json", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["artifacts"]


def siblings(path: Path) -> list[str]:
    """Names beside ``path`` that a build may have left behind."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)
