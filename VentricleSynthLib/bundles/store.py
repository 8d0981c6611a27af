"""Where model bundles live: the extension's Resources/Models, or a folder the user names.

Search order: an explicit `--models DIR`, then `$VENTRICLESYNTH_MODELS`, then the bundled folder
(VentricleSynth/Resources/Models next to this package). Bundles trained elsewhere (e.g. on GPU with
training/train.py) are used by pointing either of the first two at a folder that holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

from VentricleSynthLib.bundles.format import BundleError, model_id, read_config, verify

_LIBRARY = Path(__file__).resolve().parents[1]  # the VentricleSynthLib folder
# Source checkout: <repo>/VentricleSynth/Resources/Models; installed Slicer extension: the Lib package sits
# next to VentricleSynth.py in qt-scripted-modules, so Resources/ is its sibling.
_CANDIDATES = (_LIBRARY.parent / "VentricleSynth" / "Resources" / "Models", _LIBRARY.parent / "Resources" / "Models")
BUNDLED = next((c for c in _CANDIDATES if c.is_dir()), _CANDIDATES[0])
MASK, IMAGE, SEGMENTER = "mask_generator", "image_generator", "segmenter"


ENVIRONMENT_VARIABLE = "VENTRICLESYNTH_MODELS"


def models_dir(explicit: str | os.PathLike | None = None, skip_missing: bool = False) -> Path:
    """`explicit` if given, else $VENTRICLESYNTH_MODELS, else the bundled models. With `skip_missing` (the
    Slicer panel: a stale setting must not hide the bundled models) a folder that does not exist is passed over;
    the command line instead names the missing folder in its error."""
    for candidate in (explicit, os.environ.get(ENVIRONMENT_VARIABLE)):
        if candidate and (not skip_missing or Path(candidate).is_dir()):
            return Path(candidate)
    return BUNDLED


def bundle_path(name: str, explicit: str | os.PathLike | None = None) -> Path:
    folder = models_dir(explicit) / name
    if not folder.is_dir():
        raise BundleError(f"model bundle {name!r} not found in {folder.parent} "
                          f"(set --models or VENTRICLESYNTH_MODELS to a folder holding it)")
    return folder


def find_bundle(name: str, *roots: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    """ROOT/NAME of the first of `roots` (then the default models folder) that holds it, or None; and the
    folders searched, in order."""
    searched = list(dict.fromkeys([Path(r) for r in roots if r] + [models_dir(None)]))
    return next((r / name for r in searched if (r / name).is_dir()), None), searched


def describe(explicit: str | os.PathLike | None = None) -> list[dict]:
    """Every bundle in the models folder with its verification status (for `info` and the Models panel)."""
    root = models_dir(explicit)
    out = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for folder in folders:
        entry = {"name": folder.name, "path": str(folder)}
        try:
            manifest = verify(folder)
            config = read_config(folder) if (folder / "config.json").is_file() else {}
            entry.update({"verified": True, "files": len(manifest["files"]), **model_id(folder)} if config
                         else {"verified": True, "files": len(manifest["files"])})
            if "profile" in config:
                entry["profile"] = config["profile"]["name"]
            if "volume_normalisation" in config:
                norm = config["volume_normalisation"]
                entry["trained_range_ml"] = [round(norm["min_ml"], 1), round(norm["max_ml"], 1)]
        except BundleError as exc:
            entry.update({"verified": False, "error": str(exc)})
        out.append(entry)
    return out
