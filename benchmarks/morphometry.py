"""Speed and fidelity of cfzoo's morphometry against the reference Morpho-MNIST library.

Measures on this machine, under the conditions users meet:
  - milliseconds per image for the thickness measurement and for SetThickness (which, like the
    reference, measures the source digit first), for each stack size (--sizes), each number of
    worker processes (--workers) and each load (--loads): "idle", or "busy" with a second
    CPU-bound process running beside it, which this script starts itself;
  - each setting runs in a fresh process, so its first call pays what a user's first call pays
    (lookup tables, worker pools); the table gives that first call and the median of the rest;
  - fidelity: mean |re-measured thickness - target| and the share within 0.2 px, targets drawn
    from the dataset's thickness law;
  - total time to generate causal Morpho-MNIST from the 5,000 embedded digits;
  - with --reference-dir (a checkout of github.com/dccastro/Morpho-MNIST, never shipped with
    cfzoo), the reference library itself on the same digits in the same run: its speed and the
    largest difference between its thickness and cfzoo's.

Ratios are to the reference's figures in ../shared/MORPHOMNIST.md (one process, idle machine):
37 ms measurement, 136 ms SetThickness, fidelity 0.098 / 89.5%.

    python benchmarks/morphometry.py [--sizes 200 5000] [--workers 1 2] [--loads idle busy]
        [--repeats 3] [--reference-dir DIR] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import publish  # noqa: E402

from datamodules import morphometry  # noqa: E402
from datamodules.morphomnist import _load_embedded, render_digits  # noqa: E402

REFERENCE = {"measure_ms": 37.0, "set_thickness_ms": 136.0, "mean_error": 0.098, "within": 0.895}
#: Goals of issue 25: speed-up per image at 5,000 digits with 2 workers, and at 200 digits.
GOALS = {5000: 50.0, 200: 20.0}


def spaced_digits(n: int) -> np.ndarray:
    """``n`` of the embedded digits, evenly spread over the classes."""
    digits, _, _ = _load_embedded()
    return digits[np.linspace(0, len(digits) - 1, n).astype(int)].astype(np.float64)


def thickness_targets(n: int, seed: int) -> np.ndarray:
    return 0.5 + np.random.default_rng(seed).gamma(10.0, 1 / 5.0, n)


def time_calls(fn, repeats: int) -> tuple[float, float]:
    """Seconds of the first call and the median of ``repeats`` further calls."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def one_setting(n: int, workers: int, repeats: int) -> dict:
    """Time measurement and SetThickness in this (fresh) process."""
    digits = spaced_digits(n)
    target = thickness_targets(n, seed=0)
    first_m, median_m = time_calls(lambda: morphometry.measure_thickness(digits, workers), repeats)
    first_s, median_s = time_calls(
        lambda: morphometry.set_thickness(digits, target, workers=workers), repeats
    )
    to_ms = 1e3 / n
    return {
        "measure_first_ms": first_m * to_ms,
        "measure_ms": median_m * to_ms,
        "set_first_ms": first_s * to_ms,
        "set_ms": median_s * to_ms,
    }


def _burn() -> None:
    """A CPU-bound loop, the "other job" of a busy machine."""
    x = 1.0
    while True:
        x = (x * 1.000001 + 0.5) % 7.0


def run_setting(n: int, workers: int, repeats: int, busy: bool) -> dict:
    burner = multiprocessing.get_context("spawn").Process(target=_burn, daemon=True)
    if busy:
        burner.start()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), str(workers), str(repeats)],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        if busy:
            burner.terminate()
            burner.join()
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_side_by_side(reference_dir: Path, n: int) -> dict:
    """The reference library on ``n`` digits (as uint8, as MNIST is stored), beside cfzoo."""
    sys.path.insert(0, str(reference_dir))
    from morphomnist.morpho import ImageMorphology
    from morphomnist.perturb import SetThickness

    digits = spaced_digits(n).astype(np.uint8)
    target = thickness_targets(n, seed=0)
    start = time.perf_counter()
    theirs = np.array([ImageMorphology(d, 0.5, 4).mean_thickness for d in digits])
    measure_ms = 1e3 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for d, t in zip(digits, target):
        morph = ImageMorphology(d, 0.5, 4)
        morph.downscale(SetThickness(t)(morph))
    set_ms = 1e3 * (time.perf_counter() - start) / n
    ours = morphometry.measure_thickness(digits, workers=1)
    return {
        "n": n,
        "measure_ms": measure_ms,
        "set_ms": set_ms,
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "mean_abs_diff": float(np.abs(ours - theirs).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 5000], help="stack sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument(
        "--loads", nargs="+", default=["idle", "busy"], choices=["idle", "busy"], help="loads"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--fidelity-digits", type=int, default=1000, help="digits for fidelity")
    parser.add_argument("--reference-dir", type=Path, help="a Morpho-MNIST checkout to run beside")
    parser.add_argument("--reference-digits", type=int, default=200, help="digits for it")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--one", type=int, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_setting(*args.one)))
        return

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. "
        f"Each setting in a fresh process: its first call, then the median of {args.repeats}. "
        "Speed-ups are per image, to the reference's 37 ms (measurement) and 136 ms "
        "(SetThickness).",
        "",
        "| load | digits | workers | measure ms/img (first / median) "
        "| SetThickness ms/img (first / median) | speed-up, median (meas. / SetT.) "
        "| speed-up, first call |",
        "|---|---|---|---|---|---|---|",
    ]
    results = []
    for load in args.loads:
        for n in args.sizes:
            for workers in args.workers:
                r = run_setting(n, workers, args.repeats, busy=load == "busy")
                results.append({"load": load, "n": n, "workers": workers, **r})
                m, s = REFERENCE["measure_ms"], REFERENCE["set_thickness_ms"]
                lines.append(
                    f"| {load} | {n} | {workers} "
                    f"| {r['measure_first_ms']:.2f} / {r['measure_ms']:.2f} "
                    f"| {r['set_first_ms']:.2f} / {r['set_ms']:.2f} "
                    f"| {m / r['measure_ms']:.0f}x / {s / r['set_ms']:.0f}x "
                    f"| {m / r['measure_first_ms']:.0f}x / {s / r['set_first_ms']:.0f}x |"
                )
                print(lines[-1], flush=True)

    lines += ["", "Goals (issue 25, 2 workers, median): ≥ 50x at 5,000 digits, ≥ 20x at 200."]
    for r in results:
        goal = GOALS.get(r["n"])
        if goal and r["workers"] == 2:
            worst = min(
                REFERENCE["measure_ms"] / r["measure_ms"],
                REFERENCE["set_thickness_ms"] / r["set_ms"],
            )
            verdict = "met" if worst >= goal else "NOT met"
            lines.append(
                f"- {r['load']}, {r['n']} digits: the slower of the two is {worst:.0f}x: {verdict}."
            )

    digits = spaced_digits(args.fidelity_digits)
    target = thickness_targets(len(digits), seed=1)
    out = morphometry.set_thickness(digits, target, workers=max(args.workers))
    error = np.abs(morphometry.measure_thickness(out, workers=max(args.workers)) - target)
    lines += [
        "",
        f"| fidelity over {len(digits)} digits | mean abs error (px) | share within 0.2 px |",
        "|---|---|---|",
        f"| reference | {REFERENCE['mean_error']:.3f} | {100 * REFERENCE['within']:.1f}% |",
        f"| cfzoo | {error.mean():.3f} | {100 * (error < 0.2).mean():.1f}% |",
    ]

    embedded, _, _ = _load_embedded()
    embedded = embedded.astype(np.float64)
    start = time.perf_counter()
    source = morphometry.measure_thickness(embedded, workers=max(args.workers))
    new_t = thickness_targets(len(embedded), seed=0).astype(np.float32)
    new_i = np.random.default_rng(0).uniform(64, 255, len(embedded)).astype(np.float32)
    render_digits(embedded, source, new_t, new_i, max(args.workers))
    lines += [
        "",
        f"Generating causal Morpho-MNIST from the 5,000 embedded digits with {max(args.workers)} "
        f"workers: {time.perf_counter() - start:.1f} s.",
    ]

    if args.reference_dir:
        ref = reference_side_by_side(args.reference_dir, args.reference_digits)
        lines += [
            "",
            f"The reference library in this run, on {ref['n']} digits (uint8), one process: "
            f"{ref['measure_ms']:.0f} ms per measurement, {ref['set_ms']:.0f} ms per "
            f"SetThickness; its thickness minus cfzoo's: mean |diff| {ref['mean_abs_diff']:.2g} "
            f"px, max {ref['max_abs_diff']:.2g} px.",
        ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
