"""Pieces the benchmark scripts share: running train.py, timing counterfactuals, writing results."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_train(workdir: Path, overrides: list[str], run: str = "train") -> dict:
    """Run ``python train.py`` in ``workdir`` with its output in ``<run>.log``.

    Returns the last checkpoint, the wall time, the optimiser steps, the batch size and the
    process's own peak resident memory (``wait4``'s ``ru_maxrss``), and exits with the log's tail
    if training fails.
    """
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"paths.root_dir={workdir}",
        f"hydra.run.dir={workdir}/{run}",
        "callbacks.progress_bar.refresh_rate=0",
        *overrides,
    ]
    log_path = workdir / f"{run}.log"
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # ru_maxrss: KiB on Linux
    elapsed = time.perf_counter() - start
    output = log_path.read_text()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"train.py {' '.join(overrides)} failed (log: {log_path}):\n{output[-3000:]}")
    last = Path(re.search(r"last_ckpt: (\S+)", output).group(1))
    run_config = OmegaConf.load(workdir / run / ".hydra" / "config.yaml")
    return {
        "checkpoint": str(last),
        "wall_seconds": elapsed,
        "steps": int(torch.load(last, map_location="cpu", weights_only=True)["global_step"]),
        "batch_size": int(run_config.data.batch_size),
        "peak_train_rss_mb": usage.ru_maxrss / 1024,
    }


def build_model(model_name: str, datamodule, overrides: list[str] | None = None):
    """The ``model=<model_name>`` config of train.py (with ``overrides``), built for
    ``datamodule``'s graph and images, as train.py builds it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", *(overrides or [])])
    return instantiate(
        cfg.model,
        graph=datamodule.graph.to_dict(),
        image_shape=list(datamodule.image_shape),
        dataset=datamodule.name,
        _convert_="all",
    )


def counterfactuals_per_second(model, datamodule, batch_size: int = 256, repeats: int = 5) -> float:
    """Median throughput of ``model.counterfactual`` for do(thickness + 1) on test images (on data
    without a thickness: the first continuous attribute, up by one standard deviation)."""
    test = datamodule.test_set
    batch = test.batch(range(min(batch_size, len(test))))
    if "thickness" in datamodule.graph:
        do = {"thickness": lambda t: t + 1}
    else:
        variable = next(v for v in datamodule.graph.variables if v.is_continuous)
        do = {variable.name: lambda t: (t + variable.scale).clamp(*variable.support)}
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
