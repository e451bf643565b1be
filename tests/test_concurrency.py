"""Concurrent builds: many outputs at once, and two builds racing for one output.

Every build either succeeds or fails cleanly, successful layouts are
byte-identical, and the store ends as it started apart from the hardlinks the
successful layouts hold.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ocilayout import build_layout
from ocilayout.build import SELF_CHECK_VARIABLE
from ocilayout.check import check_layout
from ocilayout.layout import TEMP_MARKER

from .hostile_support import (
    ROOT,
    Invariants,
    PausedBuild,
    assert_hardlinks_guarded,
    cli_env,
    snapshot,
)

BUILDS = 16


@pytest.fixture(autouse=True)
def production_builds(monkeypatch):
    """Build as in production, without the test session's self-check.

    These tests check every layout with check_layout themselves, so the
    self-check would only turn a silently accepted input into an error.
    """
    monkeypatch.delenv(SELF_CHECK_VARIABLE, raising=False)


def fingerprint(layout: Path) -> dict[str, tuple]:
    """Map each path of a layout to its permission bits and content hash."""
    return {
        name: (stat.S_IMODE(state.mode), state.sha256)
        for name, state in snapshot(layout).items()
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".ocilayout-" in p.name)


def start_build(env: dict, store_root: Path, digest: str, output: Path):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocilayout",
            "build",
            "--store",
            str(store_root),
            "--digest",
            digest,
            "--output",
            str(output),
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_layouts_identical(
    outputs: list[Path], store_root: Path, warnings: list[str]
) -> None:
    reference = fingerprint(outputs[0])
    for output in outputs:
        report = check_layout(output)
        assert report.ok, (output, [str(p) for p in report.errors])
        assert fingerprint(output) == reference, f"{output} differs from {outputs[0]}"
        assert_hardlinks_guarded(output, store_root, warnings)


def test_sixteen_processes_different_outputs(pushed_multi, tmp_path):
    root = pushed_multi.store.root
    env = cli_env(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    inv = Invariants.capture(root, folder, tmp_path, tmp_path / "xdg-cache")
    outputs = [folder / f"layout-{i}" for i in range(BUILDS)]

    processes = [start_build(env, root, pushed_multi.digest, o) for o in outputs]
    finished = [(p.wait(timeout=300), *p.communicate()) for p in processes]

    for code, out, err in finished:
        assert code == 0, err
        assert '"ok": true' in out
    warnings = [w for _, out, _ in finished for w in _warnings(out)]
    assert_layouts_identical(outputs, root, warnings)
    assert leftovers(folder) == []
    inv.check_store()
    inv.check_nothing_else()


def _warnings(summary_text: str) -> list[str]:
    return json.loads(summary_text)["warnings"]


def test_sixteen_threads_different_outputs(pushed_multi, tmp_path):
    root = pushed_multi.store.root
    folder = tmp_path / "out"
    folder.mkdir()
    inv = Invariants.capture(root, folder, tmp_path)
    outputs = [folder / f"layout-{i}" for i in range(BUILDS)]

    with ThreadPoolExecutor(max_workers=BUILDS) as pool:
        results = list(
            pool.map(
                lambda output: build_layout(
                    root, output, digest=pushed_multi.digest, workers=2
                ),
                outputs,
            )
        )

    assert {r.manifest_digest for r in results} == {results[0].manifest_digest}
    warnings = [w for r in results for w in r.warnings]
    assert_layouts_identical(outputs, root, warnings)
    assert leftovers(folder) == []
    inv.check_store()
    inv.check_nothing_else()


def test_two_processes_race_for_one_output(pushed_multi, tmp_path):
    root = pushed_multi.store.root
    env = cli_env(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    reference = tmp_path / "reference"
    build_layout(root, reference, digest=pushed_multi.digest)
    output = folder / "layout"
    inv = Invariants.capture(root, folder, tmp_path, tmp_path / "xdg-cache")

    for _ in range(3):
        racers = [start_build(env, root, pushed_multi.digest, output) for _ in range(2)]
        finished = sorted((p.wait(timeout=300), *p.communicate()) for p in racers)

        (won, won_out, won_err), (lost, lost_out, lost_err) = finished
        assert won == 0, won_err
        assert '"ok": true' in won_out
        assert lost == 1, lost_err
        assert '"type": "OutputError"' in lost_out
        assert "Traceback" not in lost_err
        assert fingerprint(output) == fingerprint(reference)
        assert check_layout(output).ok
        assert leftovers(folder) == []
        inv.check_store()
        inv.check_nothing_else()
        shutil.rmtree(output)


def test_build_finishing_first_wins_output(pushed_multi, tmp_path):
    """A live build's temporary directory survives a second build's cleanup."""
    root = pushed_multi.store.root
    env = cli_env(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    output = folder / "layout"
    inv = Invariants.capture(root, output, tmp_path, tmp_path / "xdg-cache")
    first = PausedBuild(
        tmp_path,
        env,
        "--store",
        root,
        "--digest",
        pushed_multi.digest,
        "--output",
        output,
    )
    first.wait_until_paused()
    paused_temp = leftovers(folder)

    second = start_build(env, root, pushed_multi.digest, output)
    second_code = second.wait(timeout=300)
    second_out, second_err = second.communicate()
    still_there = leftovers(folder)
    first.release()
    first_code, first_out, first_err = first.finish()

    assert len(paused_temp) == 1
    assert TEMP_MARKER in paused_temp[0]
    assert second_code == 0, second_err
    assert still_there == paused_temp
    assert first_code == 1, first_err
    assert "appeared while the layout was being built" in first_out
    assert leftovers(folder) == []
    inv.assert_built(_warnings(second_out))
