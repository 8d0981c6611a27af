"""Atomic file writes: a reader (or an interrupted run) sees the old file or the new one, never half of one.

Every file the project writes goes through `atomic_write` (NIfTI, PNG, checkpoints) or one of the text
helpers below; `writable_dir` proves an output folder writable before any work starts.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from VentricleSynthLib.errors import OutputError


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data, **dumps_options) -> Path:
    """`data` as JSON (indent 2 unless told otherwise) with a final newline."""
    dumps_options.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dumps_options) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict], fieldnames: list[str]) -> Path:
    """Rows as CSV with a header; keys outside `fieldnames` are left out."""
    def _write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, _write)


def writable_dir(path, shown=None) -> Path:
    """Create `path` if needed and prove it writable before any work starts (no partial output); the error
    names `shown` (the --out the user gave) if given, else the folder."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test."):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to --out {shown or out}: {exc.strerror or exc}") from None
    return out.resolve()
