"""Compare two evaluate.py reports number by number (e.g. one process against two).

    python benchmarks/compare_reports.py RUN1/report.json RUN2/report.json

Walks both ``report.json`` files and compares every number in them (every metric's mean, std and
per-seed values, the composition curves, the floors, the effect-size lists sample by sample),
leaving out only the timings, the config, the file names and the process count. Prints how many
numbers differ at all and the largest differences; exits 1 when the two reports hold different
numbers of values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SKIPPED = ("seconds", "config", "files", "processes")


def numbers(tree: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number of a report, by its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in SKIPPED:
                yield from numbers(value, f"{path}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, f"{path}[{i}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, float(tree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    reports = [json.loads(Path(path).read_text()) for path in (args.first, args.second)]
    a, b = (dict(numbers(report)) for report in reports)
    if a.keys() != b.keys():
        print(f"the reports hold different values: {sorted(a.keys() ^ b.keys())[:10]}")
        return 1
    both = [k for k in a if not (math.isnan(a[k]) and math.isnan(b[k]))]
    differ = [k for k in both if a[k] != b[k]]
    large = max(((abs(a[k] - b[k]) / abs(a[k]), k) for k in both if abs(a[k]) > 1e-3), default=None)
    small = max(((abs(a[k] - b[k]), k) for k in both if abs(a[k]) <= 1e-3), default=None)
    print(f"{len(a)} numbers; {len(differ)} not bit-identical")
    if large:
        print(f"largest relative difference, values above 1e-3: {large[0]:.2e} at {large[1]}")
    if small:
        print(f"largest absolute difference, values up to 1e-3: {small[0]:.2e} at {small[1]}")
    for report, path in zip(reports, (args.first, args.second)):
        print(f"{path}: {report.get('processes')} process(es), suite {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
