"""How fast the explorer page answers a slider move, in a real headless browser.

    python benchmarks/explorer_latency.py vae=PATH hvae=PATH flow=PATH [--moves 20]

For each checkpoint alone, then all of them on one page: starts the page, picks a test image, and
moves the thickness slider ``--moves`` times (to values spread over its support, in a shuffled
order), timing each from the move until the first model's counterfactual image has changed in the
browser. Writes the median and the worst case per page to ``--out`` (markdown, with the command
and the commit) and a screenshot of the page with every model to ``--screenshot``.

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from common import ROOT  # puts the repository on sys.path
from zoo import git_commit  # noqa: E402

from models.explore import Explorer, free_port  # noqa: E402
from models.explore_page import launch  # noqa: E402
from tests.browser import MISSING, Page  # noqa: E402


def measure(
    explorer: Explorer, moves: int, seed: int, screenshot: Path | None = None
) -> list[float]:
    """Seconds from each slider move to the changed counterfactual on the page."""
    app, url = launch(explorer, port=free_port(), block=False)
    page = Page(url, height=1300)
    try:
        page.set_slider("test-image", 5)
        page.wait_for(lambda: "test image 5" in page.text("do-label"), "test image 5")
        low, high = explorer.graph["thickness"].support
        values = [low + (high - low) * (0.1 + 0.8 * i / max(1, moves - 1)) for i in range(moves)]
        random.Random(seed).shuffle(values)
        seconds = [page.move_and_time("do-thickness", v, watched="cf-0") for v in values]
        if screenshot:
            page.set_slider("do-thickness", 5.0)
            page.wait_for(lambda: "thickness=5" in page.text("do-label"), "do(thickness=5)")
            time.sleep(1.0)  # every image of the update painted
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(screenshot)
        return seconds
    finally:
        page.close()
        app.close()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", help="NAME=PATH, one per model")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "explorer.md"))
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "explorer.png"))
    args = parser.parse_args(argv)
    if MISSING:
        sys.exit(MISSING)
    commit = git_commit()  # before this run rewrites its own tracked outputs
    named = dict(item.split("=", 1) for item in args.checkpoints)
    pages = [[name] for name in named] + ([list(named)] if len(named) > 1 else [])
    rows = []
    for names in pages:
        explorer = Explorer.from_checkpoints([named[n] for n in names], data_dir=args.data_dir)
        last = names == pages[-1]
        seconds = measure(explorer, args.moves, args.seed, Path(args.screenshot) if last else None)
        rows.append((" + ".join(names), seconds))
        print(
            f"{rows[-1][0]}: median {statistics.median(seconds):.3f} s, worst {max(seconds):.3f} s"
        )
    command = "python benchmarks/explorer_latency.py " + " ".join(
        [*(f"{n}=<{n} checkpoint>" for n in named), f"--moves {args.moves}"]
    )
    lines = [
        "# The explorer page: seconds from a slider move to the updated counterfactual",
        "",
        f"Command: `{command}`, at commit {commit}. Headless chromium on this machine; each "
        f"page moves the thickness slider {args.moves} times and waits until the first model's "
        "counterfactual image has changed in the browser (the server computes every model's "
        "counterfactual, the true one, and both judges' readings of each before it answers).",
        "",
        "Checkpoints: " + ", ".join(f"{n} `{p}`" for n, p in named.items()) + ".",
        "",
        "| page | median (s) | worst (s) | moves |",
        "|---|---|---|---|",
        *(f"| {name} | {statistics.median(s):.3f} | {max(s):.3f} | {len(s)} |" for name, s in rows),
        "",
    ]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
