#!/usr/bin/env python3
"""STAND-IN SCANNER for tests: this is not syft, grype or trivy.

It parses the output options that ocilayout passes to the real scanners
(``-o FORMAT=FILE`` for syft and grype, ``--output FILE`` for trivy) and
behaves as ``FAKE_SCANNER_MODE`` selects. README.md in this folder lists the
modes.
"""

import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPORTS = Path(__file__).resolve().parent / "reports"
CREDENTIAL_VARIABLES = (
    "SYFT_REGISTRY_AUTH_TOKEN",
    "GRYPE_REGISTRY_AUTH_TOKEN",
    "TRIVY_REGISTRY_TOKEN",
)


def output_paths(argv):
    """Map each requested output format to its file ("trivy" for --output)."""
    paths = {}
    for option, value in itertools.pairwise(argv):
        if option == "-o" and "=" in value:
            name, path = value.split("=", 1)
            paths[name] = Path(path)
        elif option == "--output":
            paths["trivy"] = Path(value)
    return paths


def syft_report(artifact_names, layer_count):
    return {
        "artifacts": [
            {
                "name": name,
                "version": "1.0",
                "type": "deb",
                "purl": f"pkg:deb/{name}@1.0",
            }
            for name in artifact_names
        ],
        "source": {
            "type": "image",
            "metadata": {
                "layers": [
                    {"digest": f"sha256:{index:064x}", "size": 1024}
                    for index in range(layer_count)
                ]
            },
        },
        "schema": {"version": "16.0.0"},
    }


def record(argv):
    path = os.environ.get("FAKE_SCANNER_RECORD")
    if not path:
        return
    document = {
        "argv": argv,
        "environment_names": sorted(os.environ),
        "credentials": {
            name: os.environ[name]
            for name in CREDENTIAL_VARIABLES
            if name in os.environ
        },
    }
    Path(path).write_text(json.dumps(document))


def main(argv):
    record(argv)
    mode = os.environ.get("FAKE_SCANNER_MODE", "syft-ok")
    paths = output_paths(argv)
    if mode == "syft-ok":
        paths["syft-json"].write_text(json.dumps(syft_report(["base-files", "tar"], 2)))
    elif mode == "syft-fatal":
        paths["syft-json"].write_text(json.dumps(syft_report(["base-files"], 2)))
        print(
            "[0001] ERROR failed to catalog: unable to read /var/lib/dpkg/status: "
            "unexpected EOF",
            file=sys.stderr,
        )
    elif mode == "syft-empty":
        paths["syft-json"].write_text(json.dumps(syft_report([], 3)))
    elif mode == "sleep":
        Path(os.environ["FAKE_SCANNER_PIDFILE"]).write_text(str(os.getpid()))
        time.sleep(600)
    elif mode == "exit-3":
        print("stand-in scanner failing on purpose", file=sys.stderr)
        return 3
    elif mode == "grype":
        shutil.copyfile(REPORTS / "grype-report.json", paths["json"])
        shutil.copyfile(REPORTS / "grype-packages.cdx.json", paths["cyclonedx-json"])
    elif mode == "trivy":
        shutil.copyfile(REPORTS / "trivy-report.json", paths["trivy"])
    else:
        print(f"unknown FAKE_SCANNER_MODE {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
