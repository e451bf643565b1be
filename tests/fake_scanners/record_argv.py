#!/usr/bin/env python3
"""STAND-IN WRAPPER for tests: record how the scanner is called, then run it.

It writes its argv, the names of its environment variables and the value of
any registry credential variable to ``RECORD_FILE``, then replaces itself
with the real scanner at ``REAL_SCANNER`` with the same arguments.
"""

import json
import os
import sys
from pathlib import Path

CREDENTIAL_VARIABLES = (
    "SYFT_REGISTRY_AUTH_TOKEN",
    "GRYPE_REGISTRY_AUTH_TOKEN",
    "TRIVY_REGISTRY_TOKEN",
)

document = {
    "argv": sys.argv,
    "environment_names": sorted(os.environ),
    "credentials": {
        name: os.environ[name] for name in CREDENTIAL_VARIABLES if name in os.environ
    },
}
Path(os.environ["RECORD_FILE"]).write_text(json.dumps(document))
real = os.environ["REAL_SCANNER"]
os.execv(real, [real, *sys.argv[1:]])
