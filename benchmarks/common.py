"""Pieces the benchmark scripts share: running train.py, timing counterfactuals, writing results."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_train(workdir: Path, overrides: list[str]) -> tuple[Path, float]:
    """Run ``python train.py`` in ``workdir``; return its last checkpoint and the wall time."""
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"paths.root_dir={workdir}",
            "callbacks.progress_bar.refresh_rate=0",
            *overrides,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"train.py {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return Path(re.search(r"last_ckpt: (\S+)", result.stdout).group(1)), elapsed


def counterfactuals_per_second(model, datamodule, batch_size: int = 256, repeats: int = 5) -> float:
    """Median throughput of ``model.counterfactual`` for do(thickness + 1) on test images."""
    test = datamodule.test_set
    batch = test.batch(range(min(batch_size, len(test))))
    do = {"thickness": lambda t: t + 1}
    model.counterfactual(batch["x"], batch["pa"], do)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.counterfactual(batch["x"], batch["pa"], do)
        times.append(time.perf_counter() - start)
    return len(batch["x"]) / statistics.median(times)


def publish(text: str, out: str | None) -> None:
    """Print the markdown and, when asked, write it to ``out``."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text.rstrip("\n") + "\n")
