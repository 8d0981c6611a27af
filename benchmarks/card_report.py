"""`--card`: a segmenter benchmark's printed table also saved as a measured section of the bundled segmenter's
card.md, under the command that printed it (training.cards.record_benchmark), so every number in the card can be
rerun from a clean checkout. Only the bundled model's card: `--card` with `--models` is refused.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path


class Printed:
    """Lines printed to stdout and kept, in order, for the card."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip("\n") + "\n"


def add_card_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--card", action="store_true",
                        help="also write the table into the bundled segmenter's card.md (not with --models)")


def check_card_option(args: argparse.Namespace) -> None:
    """--card measures the bundled model only: with --models or $VENTRICLESYNTH_MODELS, one `error:` line, exit 2."""
    import os

    from VentricleSynthLib.bundles.store import ENVIRONMENT_VARIABLE

    if getattr(args, "card", False) and (getattr(args, "models", None) or os.environ.get(ENVIRONMENT_VARIABLE)):
        print(f"error: --card writes the bundled segmenter's card: run it without --models and "
              f"{ENVIRONMENT_VARIABLE}", file=sys.stderr)
        raise SystemExit(2)


def rerun_command(script: str, argv: list[str]) -> str:
    """The command line that reproduces the table: the script and its arguments without --card."""
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(a) for a in argv if a != "--card")])


def save_to_card(args: argparse.Namespace, name: str, printed: Printed, script: str,
                 argv: list[str] | None = None, folder: Path | None = None) -> Path | None:
    """With --card: the printed table as section `name` (training.cards.BENCHMARK_SECTIONS) of the bundled
    segmenter's card (`folder`: another bundle folder, for tests)."""
    if not getattr(args, "card", False):
        return None
    from training.cards import record_benchmark
    from VentricleSynthLib.bundles.store import BUNDLED, SEGMENTER

    folder = Path(folder) if folder else BUNDLED / SEGMENTER
    command = rerun_command(script, sys.argv[1:] if argv is None else argv)
    card = record_benchmark(folder, name, printed.text, command, datetime.date.today().isoformat())
    print(f"wrote the table into {card}", file=sys.stderr)
    return card
