#!/usr/bin/env python3
"""STAND-IN SCANNER for tests: this is not syft. It leaks its token on purpose.

It records its registry credential to ``RECORD_FILE``, then prints that token
to stderr the way a careless scanner's debug log would, and exits 1, so a
test can check that ocilayout redacts it from every message it prints.
"""

import json
import os
import sys
from pathlib import Path

token = os.environ.get("SYFT_REGISTRY_AUTH_TOKEN", "")
Path(os.environ["RECORD_FILE"]).write_text(
    json.dumps({"credentials": {"SYFT_REGISTRY_AUTH_TOKEN": token}})
)
print(f"[0000] DEBUG request header Authorization: Bearer {token}", file=sys.stderr)
print(f"[0000] ERROR registry refused token {token}", file=sys.stderr)
sys.exit(1)
