"""Print the last `make bench` results as Markdown tables for benchmarks/README.md.

Usage: python benchmarks/summary.py [.benchmarks/ocilayout-summary.json]

Each timed result becomes a row per baseline with both times and the ratio
ocilayout / baseline (below 1 means ocilayout was faster), from the fastest
round of each side and from the medians. Measured values such as peak
memory are listed after the timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_SUMMARY = Path(__file__).resolve().parents[1] / ".benchmarks" / "ocilayout-summary.json"


def shown(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.3f} ms"
    return f"{seconds:.3f} s"


def render(summary: dict) -> str:
    machine = summary["machine"]
    lines = [
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['filesystem']}, "
        f"Python {machine['python']}, Linux {machine['kernel']}. "
        f"Command: `{machine['command']}`. Rounds started without quiet CPUs: "
        f"{summary['noisy_rounds']}.",
        "",
        "| benchmark | ocilayout | best | median | baseline | best | ratio best | ratio median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    values = []
    for row in summary["results"]:
        if "value" in row:
            values.append(row)
            continue
        cells = [row["benchmark"], row["subject"], shown(row["best_s"]), shown(row["median_s"])]
        if not row["baselines"]:
            lines.append("| " + " | ".join(cells + ["", "", "", ""]) + " |")
        for name, numbers in row["baselines"].items():
            lines.append(
                "| "
                + " | ".join(
                    cells
                    + [
                        name,
                        shown(numbers["best_s"]),
                        f"{numbers['ratio_best']:.2f}",
                        f"{numbers['ratio_median']:.2f}",
                    ]
                )
                + " |"
            )
    if values:
        lines += ["", "| benchmark | measurement | value |", "|---|---|---|"]
        for row in values:
            lines.append(
                f"| {row['benchmark']} | {row['subject']} | {row['value']} {row['unit']} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"error: {path} not found; run `make bench` first", file=sys.stderr)
        return 1
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
