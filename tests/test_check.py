"""check_layout against the spec-fixtures corpus, real consumers and hostile input.

Every case folder of spec-fixtures/ records the problems the checker must
report and what skopeo, umoci and syft do with the layout. The corpus tests
compare the checker with that record. The consumer tests run the real
binaries on a copy of each case and compare them with the same record, so a
change in either the checker or a consumer fails a case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocilayout.check import check_layout, format_report
from ocilayout.check.jsonfile import MAX_JSON_BYTES

from .helpers import ROOT, tool

CORPUS = ROOT / "spec-fixtures"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").is_file())
CONSUMERS = ("skopeo", "umoci", "syft")
PREDICTED = ("syft", "skopeo", "umoci")
REF_NAME = "org.opencontainers.image.ref.name"


def record(name: str) -> dict:
    return json.loads((CORPUS / name / "expected.json").read_text())


def problem_rows(problems) -> list[tuple]:
    return sorted((p.severity, p.code, p.file, p.json_path) for p in problems)


def expected_rows(expected: dict, deep: bool) -> list[tuple]:
    return sorted(
        (p["severity"], p["code"], p["file"], p["json_path"])
        for p in expected["problems"]
        if deep or not p["deep_only"]
    )


def copy_case(name: str, into: Path) -> Path:
    """Copy a case folder, keeping symlinks, and return the copy's layout path."""
    target = into / name
    shutil.copytree(CORPUS / name, target, symlinks=True)
    return target / "layout"


# The corpus


def test_corpus_is_not_empty():
    assert len(CASES) >= 60


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("name", CASES)
def test_corpus_case_problems(name, deep):
    expected = record(name)
    report = check_layout(CORPUS / name / "layout", deep=deep)

    assert problem_rows(report.problems) == expected_rows(expected, deep), (
        format_report(report)
    )
    verdict = expected["deep_verdict"] if deep else expected["verdict"]
    assert report.ok == (verdict == "valid")


@pytest.mark.parametrize("name", CASES)
def test_corpus_case_compatibility(name):
    expected = record(name)
    report = check_layout(CORPUS / name / "layout")

    predicted = {c: report.compatibility[c][0] for c in PREDICTED}
    assert predicted == expected["compatibility"], report.compatibility
    assert report.compatibility["grype"] == report.compatibility["syft"]


@pytest.mark.parametrize("name", CASES)
def test_corpus_disagreements_explained(name):
    expected = record(name)
    valid = expected["verdict"] == "valid"
    readme = (CORPUS / name / "README.md").read_text()

    for consumer in CONSUMERS:
        verdict = expected["consumers"][consumer]
        if verdict is None:
            assert expected["note"], f"{name}: {consumer} not run, and no reason"
            continue
        accepts = verdict == "accept"
        if accepts != valid or accepts != expected["compatibility"][consumer]:
            assert expected["note"], f"{name}: {consumer} disagrees, unexplained"
    assert expected["note"] in readme


@pytest.mark.parametrize("name", CASES)
def test_corpus_readme_states_record(name):
    expected = record(name)
    lines = (CORPUS / name / "README.md").read_text().splitlines()

    assert lines[0] == f"# {name}"
    assert f"Expected verdict: {expected['verdict']}" in lines[2]
    for problem in expected["problems"]:
        assert problem["code"] in lines[2]
    assert f"Written by spec-fixtures/generate.py, case {name}." in lines


def test_corpus_matches_generator(tmp_path):
    subprocess.run(
        [sys.executable, str(CORPUS / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )

    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == CASES
    for name in CASES:
        assert tree(tmp_path / name) == tree(CORPUS / name), name


def tree(root: Path) -> dict[str, object]:
    """Map each path below ``root`` to its symlink target or file bytes."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for item in dirs + files:
            path = Path(folder) / item
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_file():
                found[relative] = path.read_bytes()
    return found


# Real consumers


def judged_pairs() -> list[tuple[str, str]]:
    return [
        (name, consumer)
        for name in CASES
        for consumer in CONSUMERS
        if record(name)["consumers"][consumer] is not None
    ]


def judge(name: str, consumer: str, workdir: Path) -> tuple[str, str]:
    """Run one consumer on a copy of a case; return its verdict and last message."""
    ref = record(name)["ref"]
    folder = Path(tempfile.mkdtemp(dir=workdir))
    layout = copy_case(name, folder)
    suffix = f":{ref}" if ref else ""
    commands = {
        "skopeo": [
            tool("skopeo"),
            "copy",
            "-q",
            f"oci:{layout}{suffix}",
            f"dir:{folder / 'copy'}",
        ],
        "umoci": [
            tool("umoci"),
            "unpack",
            "--rootless",
            "--image",
            f"{layout}{suffix}",
            str(folder / "bundle"),
        ],
        "syft": [tool("syft"), "scan", f"oci-dir:{layout}", "-o", "json", "-q"],
    }
    result = subprocess.run(
        commands[consumer],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"},
        timeout=300,
    )
    verdict = "accept" if result.returncode == 0 else "reject"
    output = (result.stderr or "").strip().splitlines()
    return verdict, output[-1] if output else ""


@pytest.fixture(scope="session")
def consumer_table(tmp_path_factory) -> dict[tuple[str, str], tuple[str, str]]:
    """Run every judged consumer on every case, two at a time, and keep a table.

    The table is also written to ``consumers.txt`` in pytest's temporary
    directory, one ``case consumer verdict message`` row per run.
    """
    workdir = tmp_path_factory.mktemp("consumers")
    pairs = judged_pairs()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = pool.map(lambda pair: judge(*pair, workdir), pairs)
        table = dict(zip(pairs, results))

    rows = [f"{n:34} {c:7} {v:7} {m}" for (n, c), (v, m) in sorted(table.items())]
    (workdir / "consumers.txt").write_text("\n".join(rows) + "\n")
    return table


@pytest.mark.consumers
@pytest.mark.parametrize(("name", "consumer"), judged_pairs())
def test_consumer_verdict_matches_record(consumer_table, name, consumer):
    recorded = record(name)["consumers"][consumer]
    verdict, message = consumer_table[(name, consumer)]

    assert verdict == recorded, f"{consumer} on {name}: {message}"


# Layouts git cannot hold


@pytest.fixture
def image_layout(tmp_path) -> Path:
    return copy_case("valid-image", tmp_path)


def layer_path(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(blob(layout, manifest_digest).read_bytes())
    return blob(layout, manifest["layers"][0]["digest"])


def blob(layout: Path, digest: str) -> Path:
    algorithm, encoded = digest.split(":")
    return layout / "blobs" / algorithm / encoded


def test_fifo_blob_reported_without_blocking(image_layout):
    path = layer_path(image_layout)
    path.unlink()
    os.mkfifo(path)

    report = check_layout(image_layout, deep=True)

    assert [p.code for p in report.errors] == ["blob-not-regular"]
    assert report.errors[0].json_path == "$.layers[0].digest"


def test_index_over_read_limit(image_layout):
    index = (image_layout / "index.json").read_bytes()
    padding = b" " * (MAX_JSON_BYTES + 1 - len(index))
    (image_layout / "index.json").write_bytes(index[:-1] + padding + b"}")

    report = check_layout(image_layout)

    assert problem_rows(report.problems) == [
        ("error", "json-too-large", "index.json", None)
    ]


def test_manifest_blob_over_read_limit(image_layout):
    # The descriptor understates the size, so only the file's own size can
    # stop the read.
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {},
        "layers": [],
        "annotations": {"padding": "x" * (MAX_JSON_BYTES + 1)},
    }
    data = json.dumps(body).encode()
    digest = hashlib.sha256(data).hexdigest()
    (image_layout / "blobs" / "sha256" / digest).write_bytes(data)
    index = json.loads((image_layout / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=1000)
    (image_layout / "index.json").write_text(json.dumps(index))

    report = check_layout(image_layout)

    assert problem_rows(report.errors) == [
        ("error", "json-too-large", f"blobs/sha256/{digest}", None),
        ("error", "size-mismatch", "index.json", "$.manifests[0].size"),
    ]


def test_shared_manifest_checked_once(image_layout):
    index = json.loads((image_layout / "index.json").read_text())
    entry = index["manifests"][0]
    del entry["annotations"]
    index["manifests"] = [entry] * 3000
    (image_layout / "index.json").write_text(json.dumps(index))

    report = check_layout(image_layout, deep=True)

    assert report.ok, format_report(report)
    assert report.blobs_checked == 3


def test_broken_manifest_reported_once_per_file(tmp_path):
    layout = copy_case("manifest-not-json", tmp_path)
    index = json.loads((layout / "index.json").read_text())
    second = dict(index["manifests"][0], annotations={REF_NAME: "again"})
    index["manifests"].append(second)
    (layout / "index.json").write_text(json.dumps(index))

    report = check_layout(layout)

    assert [p.code for p in report.problems] == ["json-invalid"]


def test_zstd_without_zstandard_warns(tmp_path, monkeypatch):
    layout = copy_case("valid-zstd-layer", tmp_path)
    monkeypatch.setitem(sys.modules, "zstandard", None)

    report = check_layout(layout, deep=True)

    assert report.ok
    assert [p.code for p in report.warnings] == ["deep-check-unavailable"]


def test_missing_path_reported(tmp_path):
    report = check_layout(tmp_path / "absent")

    assert not report.ok
    assert [p.code for p in report.errors] == ["layout-not-found"]


def test_file_as_layout_reported(tmp_path):
    (tmp_path / "file").write_text("not a layout")

    report = check_layout(tmp_path / "file")

    assert [p.code for p in report.errors] == ["layout-not-found"]


def test_symlinked_root_accepted(image_layout, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(image_layout)

    assert check_layout(link).ok


def test_empty_layout_valid_but_unreadable(tmp_path):
    (tmp_path / "blobs").mkdir()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp_path / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')

    report = check_layout(tmp_path)

    assert report.ok
    assert [p.code for p in report.warnings] == ["media-type-missing"]
    assert not any(readable for readable, _ in report.compatibility.values())


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ("null", "field-invalid"),
        ('"sha256:abc"', "field-invalid"),
        ("[]", "field-invalid"),
        ('{"mediaType":7,"digest":"sha256:0","size":1}', "media-type-invalid"),
        ('{"mediaType":"a/b","digest":null,"size":1}', "digest-invalid"),
        ('{"mediaType":"a/b","digest":"sha256:00","size":true}', "size-invalid"),
        ('{"mediaType":"a/b","digest":"sha256:00","size":1.0}', "size-invalid"),
        ('{"mediaType":"a/b","digest":"sha256:00","size":1e400}', "size-invalid"),
    ],
)
def test_malformed_entry_reported(tmp_path, entry, code):
    (tmp_path / "blobs").mkdir()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp_path / "index.json").write_text(
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
        f'"manifests":[{entry}]}}'
    )

    report = check_layout(tmp_path)

    assert code in {p.code for p in report.errors}
    assert "check-failed" not in report.codes


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_index_never_crashes(tmp_path_factory, data):
    layout = copy_case("valid-image", tmp_path_factory.mktemp("fuzz"))
    original = (layout / "index.json").read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.binary(min_size=0, max_size=8))
    (layout / "index.json").write_bytes(
        original[:position] + replacement + original[position + 1 :]
    )

    report = check_layout(layout, deep=True)

    assert "check-failed" not in report.codes, format_report(report)
    json.dumps(report.to_json())
    format_report(report)


# Output and packaging


def test_report_json_lists_every_problem():
    report = check_layout(CORPUS / "many-problems" / "layout")
    payload = report.to_json()

    assert payload["ok"] is False
    assert payload["error_count"] == 5
    assert len(payload["problems"]) == 5
    assert {p["code"] for p in payload["problems"]} == {
        "oci-layout-invalid",
        "size-invalid",
        "field-missing",
        "diff-ids-count",
        "stray-blob",
    }
    assert set(payload["compatibility"]) == {"syft", "grype", "skopeo", "umoci"}
    json.dumps(payload)


def test_text_report_names_file_path_and_code():
    report = check_layout(CORPUS / "size-mismatch" / "layout")
    text = format_report(report)

    assert "error: index.json $.manifests[0].size:" in text
    assert "[size-mismatch]" in text
    assert "invalid: 1 error, 0 warnings" in text
    assert "no  skopeo:" in text


def test_check_imports_standard_library_only():
    code = (
        "import sys; import ocilayout.check as c; "
        f"c.check_layout({str(CORPUS / 'valid-image' / 'layout')!r}, deep=True); "
        "print(sorted({'typer', 'zstandard', 'cryptography'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# Real images


def test_real_single_image_valid(real_image_single):
    report = check_layout(real_image_single.layout, deep=True)

    assert report.ok, format_report(report)


def test_real_multi_image_valid(real_image_multi):
    report = check_layout(real_image_multi.layout, deep=True)

    assert report.ok, format_report(report)
    assert report.compatibility["syft"][0] is False
