"""benchmarks/card_report.py: `--card` saves a benchmark's printed table into a segmenter card under the command
that reproduces it, and refuses to label another model's numbers as the bundled model's."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from card_report import Printed, add_card_option, rerun_command, save_to_card  # noqa: E402

from training.cards import BENCHMARK_SECTIONS, benchmark_sections  # noqa: E402
from VentricleSynthLib.bundles import format as bundles  # noqa: E402
from VentricleSynthLib.bundles.store import BUNDLED, SEGMENTER  # noqa: E402


def test_the_rerun_command_drops_card_and_quotes_arguments():
    assert rerun_command("phantom.py", ["--contrasts", "t1", "t2", "--card"]) == \
        "python benchmarks/phantom.py --contrasts t1 t2"
    assert rerun_command("contrasts.py", ["--seed", "a b"]) == "python benchmarks/contrasts.py --seed 'a b'"


def test_a_printed_table_lands_in_a_copy_of_the_segmenter_card(tmp_path, capsys):
    if not (BUNDLED / SEGMENTER).is_dir():
        pytest.skip("no bundled segmenter")
    folder = tmp_path / SEGMENTER
    shutil.copytree(BUNDLED / SEGMENTER, folder)
    before = benchmark_sections((folder / "card.md").read_text())[0]
    parser = argparse.ArgumentParser()
    add_card_option(parser)
    out = Printed()
    out("| contrast | Dice |")
    out("|---|---|")
    out("| t2 | 0.812 |")
    assert out.lines[-1] == "| t2 | 0.812 |" and "| t2 | 0.812 |" in capsys.readouterr().out
    assert save_to_card(parser.parse_args([]), "contrasts", out, "contrasts.py", ["--cases", "2"], folder) is None
    save_to_card(parser.parse_args(["--card"]), "contrasts", out, "contrasts.py", ["--cases", "2", "--card"], folder)
    stage, bodies = benchmark_sections((folder / "card.md").read_text())
    assert stage == before
    body = bodies[BENCHMARK_SECTIONS["contrasts"]]
    assert body.startswith("Measured with `python benchmarks/contrasts.py --cases 2` on ") and "| t2 | 0.812 |" in body
    bundles.verify(folder)


@pytest.mark.parametrize("script", ["phantom.py", "contrasts.py", "segment_1mm.py"])
def test_card_with_other_models_is_one_error_line(script, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--card", "--models", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == \
        ["error: --card writes the bundled segmenter's card: run it without --models and VENTRICLESYNTH_MODELS"]
