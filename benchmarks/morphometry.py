"""Speed and fidelity of cfzoo's morphometry against the reference Morpho-MNIST library.

Measures on this machine:
  - milliseconds per image for the thickness measurement and for SetThickness (which, like the
    reference, measures the source digit first), with one process and with worker processes;
  - total time to generate causal Morpho-MNIST from the 5,000 embedded digits and from 70,000
    digits (full MNIST if its files are in --data-dir, otherwise the 5,000 digits repeated);
  - fidelity: mean |re-measured thickness - target| and the share within 0.2 px, targets drawn from
    the dataset's thickness law.

Reference (Castro et al.'s library, same machine, one process; ../shared/MORPHOMNIST.md):
37 ms measurement, 136 ms SetThickness, fidelity 0.098 / 89.5%.

    python benchmarks/morphometry.py [--fidelity-digits 1000] [--skip-70k] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402

from datamodules import morphometry  # noqa: E402
from datamodules.morphomnist import _load_embedded, _load_mnist, render_digits  # noqa: E402

REFERENCE = {"measure_ms": 37.0, "set_thickness_ms": 136.0, "mean_error": 0.098, "within": 0.895}


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generate(digits: np.ndarray, workers: int, seed: int = 0) -> float:
    """Seconds to build the causal dataset from ``digits`` (measure + render), as the datamodule does."""
    rng = np.random.default_rng(seed)
    thickness = (0.5 + rng.gamma(10.0, 1 / 5.0, len(digits))).astype(np.float32)
    intensity = rng.uniform(64, 255, len(digits)).astype(np.float32)
    start = time.perf_counter()
    source_thickness = morphometry.measure_thickness(digits, workers=workers, progress="measure")
    render_digits(digits, source_thickness, thickness, intensity, workers, progress="render")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--timing-digits", type=int, default=500, help="digits per timing run")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs (the median is kept)")
    parser.add_argument("--fidelity-digits", type=int, default=1000, help="digits for fidelity")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    parser.add_argument("--data-dir", default="data", help="where full MNIST files may be")
    parser.add_argument("--skip-70k", action="store_true", help="skip the 70,000-digit run")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args()

    digits, _, _ = _load_embedded()
    digits = digits.astype(np.float64)
    timing = digits[np.linspace(0, len(digits) - 1, args.timing_digits).astype(int)]
    rng = np.random.default_rng(0)
    target = 0.5 + rng.gamma(10.0, 1 / 5.0, len(timing))
    morphometry.measure_thickness(timing[:4], workers=1)  # build the lookup tables once

    rows = []
    for workers in sorted({1, args.workers}):
        n = len(timing)
        measure_s = timed(lambda w=workers: morphometry.measure_thickness(timing, w), args.repeats)
        set_s = timed(
            lambda w=workers: morphometry.set_thickness(timing, target, workers=w), args.repeats
        )
        rows.append((workers, 1e3 * measure_s / n, 1e3 * set_s / n))

    fidelity = digits[np.linspace(0, len(digits) - 1, args.fidelity_digits).astype(int)]
    fid_target = 0.5 + np.random.default_rng(1).gamma(10.0, 1 / 5.0, len(fidelity))
    out = morphometry.set_thickness(fidelity, fid_target, workers=args.workers)
    error = np.abs(morphometry.measure_thickness(out, workers=args.workers) - fid_target)

    total_5k = generate(digits, args.workers)
    total_70k = None
    source_70k = "skipped"
    if not args.skip_70k:
        try:
            full, _, _ = _load_mnist(Path(args.data_dir), download=False)
            source_70k = "full MNIST"
        except FileNotFoundError:
            full = np.tile(digits, (14, 1, 1))
            source_70k = "the 5,000 embedded digits x 14"
        total_70k = generate(full.astype(np.float64), args.workers)

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.timing_digits} digits per timing, median of {args.repeats}.",
        "",
        "| | processes | measurement ms/img | SetThickness ms/img | speed-up (meas. / SetT.) |",
        "|---|---|---|---|---|",
        f"| reference (Castro et al.) | 1 | {REFERENCE['measure_ms']:.0f} | "
        f"{REFERENCE['set_thickness_ms']:.0f} | 1x / 1x |",
    ]
    for workers, measure_ms, set_ms in rows:
        lines.append(
            f"| cfzoo | {workers} | {measure_ms:.2f} | {set_ms:.2f} | "
            f"{REFERENCE['measure_ms'] / measure_ms:.0f}x / "
            f"{REFERENCE['set_thickness_ms'] / set_ms:.0f}x |"
        )
    lines += [
        "",
        f"| fidelity over {len(fidelity)} digits | mean abs error (px) | share within 0.2 px |",
        "|---|---|---|",
        f"| reference | {REFERENCE['mean_error']:.3f} | {100 * REFERENCE['within']:.1f}% |",
        f"| cfzoo | {error.mean():.3f} | {100 * (error < 0.2).mean():.1f}% |",
        "",
        f"Dataset generation with {args.workers} processes: 5,000 digits {total_5k:.1f} s"
        + (f"; 70,000 digits ({source_70k}) {total_70k:.0f} s." if total_70k else "."),
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
