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
