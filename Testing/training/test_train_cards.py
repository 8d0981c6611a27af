"""Model cards (training/cards.py): the texts the committed bundles' cards were written from, and how a card's
sections are replaced (the manifest follows every change)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.cards import (
    BENCHMARK_SECTIONS,
    benchmark_sections,
    generator_card,
    record_benchmark,
    replace_section,
    replace_sections,
    segmenter_card,
    write_card,
)
from VentricleSynthLib.bundles import format as bundles

MODELS = Path(__file__).resolve().parents[2] / "VentricleSynth" / "Resources" / "Models"


def _committed(name: str) -> tuple[dict, str]:
    if not (MODELS / name / "card.md").is_file():
        pytest.skip(f"no committed {name} bundle")
    return json.loads((MODELS / name / "config.json").read_text()), (MODELS / name / "card.md").read_text()


def test_the_committed_segmenter_card_is_its_config_and_metrics():
    """What the stage wrote, then only benchmark sections (`benchmarks/... --card`), each under its command."""
    config, card = _committed("segmenter")
    card, sections = benchmark_sections(card)
    assert all(body.startswith("Measured with `python benchmarks/") for body in sections.values())
    text = segmenter_card(config, config["training"]["metrics"])
    # line for line; the `Use:` line names the library's segment_file wherever the library keeps it now
    assert [line for line in text.splitlines() if not line.startswith("Use: ")] == \
        [line for line in card.splitlines() if not line.startswith("Use: ")]
    assert len(text.splitlines()) == len(card.splitlines()) and text.endswith("\n") == card.endswith("\n")


def test_the_committed_image_generator_card_starts_with_its_config():
    config, card = _committed("image_generator")
    text = generator_card(config, "Image generator: SPADE latent diffusion model, label map -> T1-like MRI")
    assert card.startswith(text) and card[len(text):].startswith("\n## Image realism (measured)\n")


def test_sections_are_replaced_in_place_or_appended():
    text = "# Title\n\n- a line\n\n## One\nold one\n\n## Two\nold two\n"
    assert replace_section(text, "One", "new one\n") == "# Title\n\n- a line\n\n## One\nnew one\n\n## Two\nold two\n"
    assert replace_section(text, "Two", "new two\n") == "# Title\n\n- a line\n\n## One\nold one\n\n## Two\nnew two\n"
    assert replace_section("# Title\n\n- a line\n", "Three", "three\n") == "# Title\n\n- a line\n\n## Three\nthree\n"
    assert replace_section("", "Three", "three\n") == "\n\n## Three\nthree\n"


def test_changing_a_card_rewrites_the_manifest(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_card(folder, "# A bundle\n")
    assert bundles.verify(folder)["files"].keys() == {"config.json", "card.md"}
    replace_sections(folder, {"Measured": "numbers\n", "Other": "more\n"})
    assert (folder / "card.md").read_text() == "# A bundle\n\n## Measured\nnumbers\n\n## Other\nmore\n"
    bundles.verify(folder)  # the manifest follows the card
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    replace_sections(copy, {"Measured": "other numbers\n"})
    assert (copy / "card.md").read_text() == "# A bundle\n\n## Measured\nother numbers\n\n## Other\nmore\n"
    bundles.verify(copy)


def test_benchmark_sections_follow_the_stage_text_in_a_fixed_order_and_replace_themselves(tmp_path):
    folder = tmp_path / "segmenter"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    stage = "# Segmenter\n\n## Measured\n\n| set | n |\n|---|---|\n| val | 3 |\n"
    write_card(folder, stage)
    record_benchmark(folder, "segment_1mm", "| run | s |\n| 1 | 9.0 |\n", "python benchmarks/segment_1mm.py",
                     "2026-12-03")
    record_benchmark(folder, "contrasts", "| c | Dice |\n| t1 | 0.9 |", "python benchmarks/contrasts.py", "2026-12-03")
    text = (folder / "card.md").read_text()
    assert text.startswith(stage)
    assert text.index(BENCHMARK_SECTIONS["contrasts"]) < text.index(BENCHMARK_SECTIONS["segment_1mm"])
    record_benchmark(folder, "contrasts", "| c | Dice |\n| t1 | 0.8 |", "python benchmarks/contrasts.py", "2026-12-04")
    again = (folder / "card.md").read_text()
    stage_again, bodies = benchmark_sections(again)
    assert stage_again == stage and "0.9" not in again and "| t1 | 0.8 |" in bodies[BENCHMARK_SECTIONS["contrasts"]]
    assert bodies[BENCHMARK_SECTIONS["contrasts"]].startswith(
        "Measured with `python benchmarks/contrasts.py` on 2026-12-04")
    assert again.count("## ") == 3
    bundles.verify(folder)  # the manifest follows
