"""What every command line of the project shares: usage errors and user errors as one `error: …` line.

Used by `python -m VentricleSynthLib` (cli), its `worker` (the Slicer module's subprocess) and
`training/train.py`: a usage error exits 2, a `VentricleSynthError` exits with its own code, Ctrl-C with 130;
never a traceback for something the user can fix.
"""

from __future__ import annotations

import argparse
import sys

from VentricleSynthLib.errors import VentricleSynthError

EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `error:` line (exit 2), like every other user error."""

    def error(self, message):  # noqa: D401 - argparse hook
        self.exit(2, f"error: {message} (see --help)\n")


def one_line(message) -> str:
    """A message on one line, even when a library message spans several."""
    return " ".join(str(message).split())


def print_error(message) -> None:
    print("error: " + one_line(message), file=sys.stderr, flush=True)


def print_warning(message) -> None:
    print("warning: " + one_line(message), file=sys.stderr, flush=True)


def run_command(command, *args) -> int:
    """`command(*args)` as a process exit code: user errors and Ctrl-C become one `error:` line."""
    try:
        return int(command(*args) or 0)
    except VentricleSynthError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
