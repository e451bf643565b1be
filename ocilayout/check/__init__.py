"""Validate an OCI image layout against image-spec 1.1, reporting every problem.

    report = check_layout("/tmp/layout", deep=True)
    if not report.ok:
        print(format_report(report))

The check does not raise on a malformed or hostile layout, and it never
follows a symbolic link below the layout root. Everything it finds becomes
a Problem with a stable ``code``. Only the standard library is needed, except
that a deep check of zstd layers imports ``zstandard``.
"""

from __future__ import annotations

import logging
import os

from . import files as fs
from .compat import summarize
from .fields import Findings
from .report import ERROR, WARNING, CheckReport, Problem, format_report
from .walk import Walker

__all__ = [
    "ERROR",
    "WARNING",
    "CheckReport",
    "Problem",
    "check_layout",
    "format_report",
]

log = logging.getLogger(__name__)


def check_layout(path: str | os.PathLike[str], deep: bool = False) -> CheckReport:
    """Check the layout at ``path`` and return a report of every problem.

    With ``deep`` the layers are also decompressed and compared with the
    config's diff_ids, which reads every layer in full.
    """
    report = CheckReport(path=os.fspath(path), deep=deep)
    findings = Findings()

    try:
        files = fs.LayoutFiles(path)
    except OSError as exc:
        findings.error(
            ".",
            None,
            "layout-not-found",
            f"{os.fspath(path)} is not a readable directory: {exc.strerror}",
        )
        report.problems = findings.problems
        return report

    with files:
        walker = Walker(files, findings, deep)
        try:
            walker.run()
        except Exception as exc:  # a bug in the checker becomes a problem too
            log.exception("check of %s stopped early", path)
            findings.error(
                ".",
                None,
                "check-failed",
                f"the check stopped early on an unexpected error: {exc!r}; "
                "please report it with the layout",
            )

    report.problems = findings.problems
    report.blobs_checked = walker.blobs.checked
    error_codes = [p.code for p in findings.problems if p.severity == ERROR]
    report.compatibility = summarize(walker.entries, error_codes)
    return report
