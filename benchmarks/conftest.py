"""Shared helpers of the benchmarks: commands, timers and the results summary.

Every comparison times ocilayout and its baselines in the same run, on the
same files, alternating between them round by round, so that load from
other processes on the machine affects both sides alike. Ratios compare
the fastest round of each side (the cost with the least interference); the
summary also lists medians. The page cache is warm for every command, and
dirty pages are written back (``os.sync``) before each timed round, so one
round's writeback does not slow the next.

Results are printed at the end of the session and written to
``.benchmarks/ocilayout-summary.json``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUMMARY_PATH = ROOT / ".benchmarks" / "ocilayout-summary.json"

_RESULTS: list[dict] = []


def ocilayout_command() -> list[str]:
    """Return the installed ``ocilayout`` console script, as a user runs it."""
    script = BIN / "ocilayout"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ocilayout"]


def require_tool(name: str) -> str:
    """Return the path of a baseline tool; fail loudly when it is absent."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not installed; run `make bench`, which installs it"
        )
    return path


def run(argv: Sequence[str | os.PathLike[str]]) -> None:
    """Run a command, discarding its output, and fail on a non-zero exit."""
    result = subprocess.run(
        [str(a) for a in argv],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )


# A round starts only when the other processes of the machine use at most
# this share of all CPUs, so that two-thread hashing has two cores to run on.
QUIET_BUSY_SHARE = 0.15
QUIET_TIMEOUT_SECONDS = 120.0
_NOISY_ROUNDS = {"count": 0}


def _cpu_times() -> tuple[int, int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return idle, sum(values[:8])


def wait_for_quiet_cpus(window: float = 0.25) -> bool:
    """Wait until the machine's CPUs are nearly idle; return False on timeout.

    Other processes on a shared machine would otherwise take the cores that
    ocilayout's parallel hashing needs, and distort every ratio. After
    QUIET_TIMEOUT_SECONDS the round runs anyway and is counted as noisy.
    """
    deadline = time.monotonic() + QUIET_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        idle_before, total_before = _cpu_times()
        time.sleep(window)
        idle_after, total_after = _cpu_times()
        total = max(1, total_after - total_before)
        busy = 1 - (idle_after - idle_before) / total
        if busy <= QUIET_BUSY_SHARE:
            return True
    _NOISY_ROUNDS["count"] += 1
    return False


def timed(action: Callable[[], object]) -> float:
    """Return the seconds ``action`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def read_all(paths: Sequence[Path]) -> None:
    """Read every file once, so the page cache holds them."""
    buffer = bytearray(1 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as stream:
            while stream.readinto(buffer):
                pass


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Command:
    """A baseline command: ``prepare`` runs untimed before each timed ``action``."""

    action: Callable[[], object]
    prepare: Callable[[], object] | None = None


@dataclass
class Baselines:
    """Seconds per round of each baseline command, collected between rounds."""

    commands: dict[str, Command]
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def run_round(self) -> None:
        for name, command in self.commands.items():
            if command.prepare is not None:
                command.prepare()
            os.sync()
            wait_for_quiet_cpus()
            self.seconds.setdefault(name, []).append(timed(command.action))

    def best(self, name: str) -> float:
        return min(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])


def subject_times(benchmark) -> tuple[float, float]:
    """Return (fastest, median) seconds of the rounds pytest-benchmark timed."""
    stats = benchmark.stats.stats
    return stats.min, stats.median


def record(
    benchmark,
    name: str,
    subject: str,
    baselines: Baselines | None = None,
    note: str = "",
) -> dict[str, float]:
    """Store the subject's times and its ratio to each baseline; return the ratios.

    A ratio is subject time / baseline time, so below 1 means ocilayout was
    faster.
    """
    best, median = subject_times(benchmark)
    ratios = {}
    row = {
        "benchmark": name,
        "subject": subject,
        "best_s": round(best, 6),
        "median_s": round(median, 6),
        "rounds": len(benchmark.stats.stats.data),
        "baselines": {},
        "note": note,
    }
    for base in baselines.seconds if baselines else {}:
        ratio = best / baselines.best(base)
        ratios[base] = ratio
        row["baselines"][base] = {
            "best_s": round(baselines.best(base), 4),
            "median_s": round(baselines.median(base), 4),
            "ratio_best": round(ratio, 3),
            "ratio_median": round(median / baselines.median(base), 3),
        }
    benchmark.extra_info.update(row)
    _RESULTS.append(row)
    return ratios


def record_value(name: str, subject: str, value: float, unit: str, note: str = ""):
    """Store a measured value that is not a time, such as peak memory."""
    _RESULTS.append(
        {
            "benchmark": name,
            "subject": subject,
            "value": value,
            "unit": unit,
            "note": note,
        }
    )


def machine() -> dict[str, str]:
    """Describe the machine and the filesystem the benchmarks ran on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    filesystem = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", os.environ.get("TMPDIR", "/tmp")],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "filesystem": filesystem or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "command": "make bench (pytest -q benchmarks --benchmark-only)",
    }


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RESULTS:
        return
    info = machine()
    SUMMARY_PATH.parent.mkdir(exist_ok=True)
    summary = {
        "machine": info,
        "noisy_rounds": _NOISY_ROUNDS["count"],
        "results": _RESULTS,
    }
    SUMMARY_PATH.write_text(json.dumps(summary, indent=2))

    write = terminalreporter.write_line
    write("")
    write("ocilayout benchmark summary (ratio = ocilayout / baseline, fastest rounds)")
    write("  " + ", ".join(f"{k}: {v}" for k, v in info.items()))
    write(f"  rounds started without quiet CPUs: {_NOISY_ROUNDS['count']}")
    for row in _RESULTS:
        if "value" in row:
            write(
                f"  {row['benchmark']}: {row['subject']} = {row['value']} {row['unit']}"
            )
            continue
        write(
            f"  {row['benchmark']}: {row['subject']} best {_shown(row['best_s'])}, "
            f"median {_shown(row['median_s'])}"
        )
        for base, numbers in row["baselines"].items():
            write(
                f"      vs {base}: {_shown(numbers['best_s'])} -> ratio "
                f"{numbers['ratio_best']:.2f} (medians {numbers['ratio_median']:.2f})"
            )
    write(f"  written to {SUMMARY_PATH}")


def _shown(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.3f} ms"
    return f"{seconds:.3f} s"


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    """A scratch folder on the filesystem of the system temporary directory."""
    return tmp_path_factory.mktemp("bench")
