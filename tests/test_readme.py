import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second():
    section = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.strip().splitlines() if line.strip()]
    assert len(lines) == 2
    assert "train.py" in lines[0] and "pytest" in lines[1]
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_the_pretrained_table_is_the_shipped_models():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pretrained

    text = (ROOT / "README.md").read_text()
    block = text.split(pretrained.README_START, 1)[1].split(pretrained.README_END, 1)[0]
    assert block.strip() == pretrained.readme_table().strip(), (
        "README's pretrained table is stale: python benchmarks/pretrained.py --readme README.md"
    )
    assert text.index("## Pretrained models") < text.index("## The model zoo")  # near the top
