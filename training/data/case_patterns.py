"""Finding image/label-map pairs in the user's own folder by two path patterns with one `{case}` placeholder
(e.g. `"{case}/mri/T1.nii.gz"` + `"{case}/mri/aseg.nii.gz"`; `*`, `?`, `[...]` and a whole-component `**` are
allowed elsewhere)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from VentricleSynthLib.errors import ConfigError, DatasetError

from training.data.import_report import ImportReport

CASE = "{case}"


def _check_pattern(pattern: str, what: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{what} pattern is empty")
    if pattern.count(CASE) != 1:
        raise ConfigError(f"{what} pattern {pattern!r} must contain exactly one {CASE} placeholder")
    path = PurePosixPath(pattern)
    if path.is_absolute() or pattern.startswith("\\") or re.match(r"^[A-Za-z]:", pattern):
        raise ConfigError(f"{what} pattern {pattern!r} must be relative to the source folder")
    if any(part == ".." for part in path.parts):
        raise ConfigError(f"{what} pattern {pattern!r} must not leave the source folder ('..')")
    for part in path.parts:
        if "**" in part and part != "**":
            raise ConfigError(f"{what} pattern {pattern!r}: '**' must be a whole path component")


def _glob_of(pattern: str) -> str:
    """The glob for discovery: {case} -> '*', runs of '*' inside a component collapsed."""
    parts = []
    for part in PurePosixPath(pattern).parts:
        if part == "**":
            parts.append(part)
        else:
            parts.append(re.sub(r"\*+", "*", part.replace(CASE, "*")))
    return "/".join(parts)


def _regex_of(pattern: str) -> re.Pattern:
    """A regex over the posix relative path with one group `case` for the placeholder."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith(CASE, i):
            out.append(r"(?P<case>[^/]+)")
            i += len(CASE)
        elif pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append(r"(?:[^/]+/)*")
            i += 3
        elif pattern[i] == "*":
            out.append(r"[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^/]")
            i += 1
        elif pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _match(root: Path, pattern: str) -> dict[str, list[Path]]:
    """case id -> matching files under `root` (hidden names skipped unless the pattern asks for them)."""
    regex = _regex_of(pattern)
    allow_hidden = pattern.startswith(".") or "/." in pattern
    found: dict[str, list[Path]] = {}
    for path in root.glob(_glob_of(pattern)):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        if not allow_hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        m = regex.match(rel)
        if m:
            found.setdefault(m.group("case"), []).append(path)
    return found


def discover_pairs(root: Path, image_pattern: str, label_pattern: str
                   ) -> tuple[dict[str, tuple[Path, Path]], ImportReport]:
    """Find image/label-map pairs under `root` by two `{case}` patterns.

    Returns {case id: (image path, label path)} sorted by case id, and a report that lists cases
    with only one partner (`missing_image` / `missing_label`) and cases whose id matches several
    files of one pattern (in `skipped`, as ambiguous). Raises `ConfigError` for a bad pattern and
    `DatasetError` if `root` is not a folder.
    """
    root = Path(root)
    _check_pattern(image_pattern, "image")
    _check_pattern(label_pattern, "label")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    images = _match(root, image_pattern)
    labels = _match(root, label_pattern)
    report = ImportReport(source=str(root), image_pattern=image_pattern, label_pattern=label_pattern)
    pairs: dict[str, tuple[Path, Path]] = {}
    for case in sorted(set(images) | set(labels)):
        imgs, labs = sorted(images.get(case, [])), sorted(labels.get(case, []))
        # The same file can match both patterns (e.g. identical patterns); never pair a file with itself.
        if imgs and labs and set(imgs) == set(labs):
            report.skipped[case] = f"image and label patterns match the same file(s): {_names(root, imgs)}"
            continue
        if not imgs:
            report.missing_image.append(case)
        elif not labs:
            report.missing_label.append(case)
        elif len(imgs) > 1:
            report.skipped[case] = f"ambiguous: {len(imgs)} images match ({_names(root, imgs)})"
        elif len(labs) > 1:
            report.skipped[case] = f"ambiguous: {len(labs)} label maps match ({_names(root, labs)})"
        else:
            pairs[case] = (imgs[0], labs[0])
            report.found[case] = (str(imgs[0]), str(labs[0]))
    return pairs, report


def _names(root: Path, paths: list[Path], limit: int = 3) -> str:
    shown = [p.relative_to(root).as_posix() for p in paths[:limit]]
    return ", ".join(shown) + (" ..." if len(paths) > limit else "")
