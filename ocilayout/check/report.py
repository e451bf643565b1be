"""The result of a layout check: problems, compatibility and their renderings."""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One finding about a layout.

    ``file`` is relative to the layout root, for example ``index.json`` or
    ``blobs/sha256/<hex>``. ``json_path`` locates the value inside that file
    (``$.manifests[0].digest``) and is None when the whole file is concerned.
    ``code`` is a stable slug for programs, and ``message`` is for people.
    """

    severity: str
    file: str
    json_path: str | None
    code: str
    message: str

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "file": self.file,
            "json_path": self.json_path,
            "code": self.code,
            "message": self.message,
        }


@dataclass
class CheckReport:
    """Every problem found in one layout, and which consumers can read it.

    ``compatibility`` maps a consumer name (``syft``, ``grype``, ``skopeo``,
    ``umoci``) to ``(readable, reason)``.
    """

    path: str
    deep: bool
    problems: list[Problem] = field(default_factory=list)
    compatibility: dict[str, tuple[bool, str]] = field(default_factory=dict)
    blobs_checked: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "deep": self.deep,
            "ok": self.ok,
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "blobs_checked": self.blobs_checked,
            "problems": [p.to_json() for p in self.problems],
            "compatibility": {
                consumer: {"readable": readable, "reason": reason}
                for consumer, (readable, reason) in self.compatibility.items()
            },
        }


def format_report(report: CheckReport) -> str:
    """Render a report as plain text: problems first, then the consumer summary."""
    lines = [f"layout {report.path}" + (" (deep)" if report.deep else "")]

    for problem in report.problems:
        where = problem.file
        if problem.json_path:
            where += f" {problem.json_path}"
        lines.append(
            f"  {problem.severity}: {where}: {problem.message} [{problem.code}]"
        )

    verdict = "valid" if report.ok else "invalid"
    counts = [
        _count(len(report.errors), "error"),
        _count(len(report.warnings), "warning"),
        _count(report.blobs_checked, "blob") + " checked",
    ]
    lines.append(f"{verdict}: {', '.join(counts)}")

    if report.compatibility:
        lines.append("consumers:")
        for consumer, (readable, reason) in report.compatibility.items():
            mark = "yes" if readable else "no "
            lines.append(f"  {mark} {consumer}: {reason}")
    return "\n".join(lines) + "\n"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
