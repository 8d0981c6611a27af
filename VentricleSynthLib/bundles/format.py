"""Model bundles: a folder with config.json, *.safetensors weights, card.md and a sha256 manifest.

Weights are stored as float16 and loaded as float32. Loading verifies every file in the manifest
before anything is read, refuses a manifest that leaves out a file the loader reads (`loader_files`), and
never unpickles code (safetensors + JSON only). torch and safetensors are imported only to read or write
weights: finding, verifying and describing bundles is torch-free (Slicer's own process does it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from VentricleSynthLib.errors import VentricleSynthError
from VentricleSynthLib.io.atomic import write_text

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
CONFIG = "config.json"


class BundleError(VentricleSynthError):
    """A model bundle is missing, incomplete, corrupted or fails its checksums."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict:
    """Checksum every file of the bundle (except the manifest itself)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    manifest = {"files": files}
    text = json.dumps(manifest, indent=2) + "\n"
    write_text(folder / MANIFEST, text)
    return manifest


GENERATOR_WEIGHTS = ("autoencoder", "unet")  # what generation.generators loads from a generator bundle


def loader_files(config: dict) -> list[str]:
    """Every file a loader reads from a bundle with this config.json: the config itself; a generator's (config
    "architecture") autoencoder and unet weights; a segmenter's (config "nnunet") plans.json, dataset.json
    and the checkpoint of each fold it loads."""
    files = [CONFIG]
    if "architecture" in config:
        files += [f"{name}.safetensors" for name in GENERATOR_WEIGHTS]
    nn = config.get("nnunet")
    if isinstance(nn, dict) and "model_folder" in nn:
        model = str(nn["model_folder"]).rstrip("/")
        checkpoint = nn.get("checkpoint", "checkpoint_final.pth")
        files += [f"{model}/plans.json", f"{model}/dataset.json"]
        files += [f"{model}/fold_{fold}/{checkpoint}" for fold in nn.get("folds") or []]
    return files


def verify(folder: Path, required: tuple[str, ...] | list[str] = ()) -> dict:
    """Check the manifest's checksums, and that the manifest covers config.json, every file its loader reads
    (`loader_files`) and `required`; returns the manifest. Raises BundleError on any mismatch or omission."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder} does not exist")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleError(f"model bundle {folder} has no valid {MANIFEST}") from None

    def check(rel: str) -> None:
        path = folder / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"model bundle {folder}: {MANIFEST} names a file outside the bundle ({rel})")
        if not path.is_file():
            raise BundleError(f"model bundle {folder}: missing file {rel}")
        if sha256(path) != files[rel]:
            raise BundleError(f"model bundle {folder}: checksum mismatch for {rel} (corrupted or modified)")

    if CONFIG not in files:
        raise BundleError(f"model bundle {folder}: {MANIFEST} does not cover {CONFIG} (not verified; refused)")
    check(CONFIG)
    needed = list(dict.fromkeys([*loader_files(read_config(folder)), *required]))
    uncovered = [rel for rel in needed if rel not in files]
    if uncovered:
        raise BundleError(f"model bundle {folder}: {MANIFEST} does not cover {', '.join(uncovered)}, which the "
                          f"loader reads (not verified; refused)")
    for rel in files:
        if rel != CONFIG:
            check(rel)
    return manifest


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {folder}: cannot read {CONFIG} ({exc})") from None
    if not isinstance(config, dict):
        raise BundleError(f"model bundle {folder}: {CONFIG} is not a JSON object")
    return config


def load_weights(folder: Path, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / f"{name}.safetensors"
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"model bundle {folder}: cannot read {path.name} ({exc})") from None
    return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}


def model_id(folder: Path) -> dict:
    """Identity of a verified bundle for provenance records: name, version and manifest digest."""
    config = read_config(folder)
    digest = hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()
    return {"name": config.get("name", Path(folder).name), "version": config.get("version"), "sha256": digest}


def save_bundle(folder: Path, config: dict, modules: dict[str, torch.nn.Module],
                extra_files: dict | None = None) -> Path:
    """Write a complete bundle into a temporary sibling, then swap it in (never a half-written bundle)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, module in modules.items():
            state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
                     for k, v in module.state_dict().items()}
            save_file(state, str(staging / f"{name}.safetensors"))
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        for rel, src in (extra_files or {}).items():
            shutil.copyfile(src, staging / rel)
        write_manifest(staging)
        swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def swap_in(staging: Path, folder: Path) -> None:
    """Replace `folder` by the complete `staging` folder (a sibling) with renames only."""
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
