"""Atomic file writes: a reader (or an interrupted run) sees the old file or the new one, never half of one.

Every file the project writes goes through `atomic_write` (NIfTI, PNG, checkpoints) or one of the text
helpers below; `writable_dir` proves an output folder writable before any work starts, and
`refuse_overwriting_inputs` keeps every command from writing over one of its own inputs.

The output rule (all commands): an existing output file is replaced atomically and keeps its permission bits;
an output that is one of the command's inputs (same path, a symlink or a hard link to it) is refused.
A temporary file is named `.NAME.tmp-HOST-PID-XXXXXXXX.SUFFIX`; the next write of NAME removes those left by
processes of this host that no longer run (a killed run), never a live writer's.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from VentricleSynthLib.errors import OutputError


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (or cannot be told apart from running): a leftover of a
    writer that still runs is never removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by killed writers (this host, pid no longer running); return them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-{re.escape(_host())}-(\d+)-[A-Za-z0-9_]+(\.[^/]*)?")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            try:
                sibling.unlink()
                removed.append(sibling)
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a partial file.

    A new file gets the umask's permissions; a file replaced keeps its own permission bits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    suffix = "".join(path.suffixes[-2:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{_host()}-{os.getpid()}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def refuse_overwriting_inputs(out: str | os.PathLike, *inputs: str | os.PathLike | None,
                              option: str = "--out") -> None:
    """Raise `OutputError` if `out` is one of `inputs`: the same path, a symlink to it or a hard link (same file).

    Call it before any work; `option` names the output in the message (inputs that are None are skipped).
    """
    out_path = Path(out)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        if not source.exists():
            continue  # nothing to overwrite; reading it reports the problem
        same = out_path.resolve() == source.resolve()
        if not same and out_path.exists() and source.exists():
            try:
                same = os.path.samefile(out_path, source)
            except OSError:
                same = False
        if same:
            raise OutputError(f"{option} {out_path} is the input {source} itself; an input is never overwritten: "
                              f"give another output name")


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
