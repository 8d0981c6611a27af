"""Where training commands write: an output folder proved writable before any long computation, never one of
the command's input folders. (The hidden partial files of a killed run are removed by the next atomic write
of the same file: `io.atomic.remove_stale_temporaries`.)

The rules (README, "Errors"):

* `--work` / `--out` is checked first: a file where a folder is expected, or a folder that cannot be written,
  is one `error:` line (exit 2) and nothing is written;
* an output folder may not be an input folder nor lie inside one (symlinks resolved); an input folder inside
  the output folder is allowed where the command's own files cannot land on it (the caller decides); an
  input *file* (a mapping CSV) is never one of the output files (`io.atomic.refuse_overwriting_inputs`).
"""

from __future__ import annotations

from pathlib import Path

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import writable_dir

def missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    path = Path(path).absolute()
    return [p for p in [path, *path.parents] if not (p.exists() or p.is_symlink())]


def remove_if_empty(dirs: list[Path]) -> None:
    """Remove the folders of `dirs` (deepest first) that are still empty: a failed run leaves no empty folder."""
    for folder in dirs:
        try:
            folder.rmdir()
        except OSError:
            return


def output_folder(path: Path, shown: str) -> Path:
    """Create `path` if needed and prove it writable; `shown` names it in the error (e.g. '--work W')."""
    absolute = Path(path).absolute()
    for parent in [absolute, *absolute.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write to {shown}: {parent} is a file, not a folder")
            break
    try:
        return writable_dir(path, shown=shown)
    except OutputError as exc:
        reason = str(exc).rpartition(": ")[2]
        raise OutputError(f"cannot write to {shown}: {reason}") from None


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def refuse_inside_inputs(out: Path, shown: str, inputs: dict[str, Path]) -> None:
    """Refuse an output folder that is one of the input folders (`inputs`: what to call it -> folder) or lies
    inside one: the command's files would land among (and could replace) the user's inputs."""
    target = Path(out).resolve()
    for what, folder in inputs.items():
        if _within(target, Path(folder).resolve()):
            where = "is" if target == Path(folder).resolve() else "lies inside"
            raise OutputError(f"{shown} {where} the input folder {what} {folder}; its files could be replaced: "
                              "choose an output folder outside the inputs")
