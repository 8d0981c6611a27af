"""House rules that a reviewer would otherwise have to check by eye."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINE = 120


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    files = [REPO / f for f in listed if (REPO / f).is_file()] or sorted(REPO.glob("*/**/*.py"))
    return [f for f in files if ".venv" not in f.parts]


def test_no_python_line_is_longer_than_the_house_limit():
    long = [f"{f.relative_to(REPO)}:{i}" for f in _python_files()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1) if len(line) > MAX_LINE]
    assert not long, f"lines over {MAX_LINE} characters: {', '.join(long)}"
