"""Writing generated samples: DIR/sample_000/{image.nii.gz,label.nii.gz,preview.png,sample.json}.

A sample folder is assembled in a hidden temporary sibling, `.sample_000.<pid>.XXXX/`, and renamed into place,
so a reader (or an interrupted run) never sees half a sample. A staging folder whose process is gone (killed)
is stale: writing sample k first removes sample k's stale staging folders (`remove_stale_staging`), never a
live one, so shards writing other samples into the same folder keep theirs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import process_alive
from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.io.montage import draw_outlined, ventricle_views
from VentricleSynthLib.io.nifti import Volume, save_volume


def write_preview(image: np.ndarray, label: np.ndarray, path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the ventricles, ventricles outlined."""
    with png_figure(path, dpi=80, ncols=3, figsize=(9, 3.4)) as (fig, axes):
        for ax, (img, msk) in zip(axes, ventricle_views(image, label, n_views=3)):
            draw_outlined(ax, img, msk)
        fig.suptitle(title, fontsize=9)


def sample_name(index: int) -> str:
    return f"sample_{index:03d}"


def staging_pid(name: str, index: int) -> int | None:
    """The creator's pid of a staging folder `.sample_NNN.<pid>.XXXX` of sample `index`; -1 for one without a
    pid (written before pids were recorded: stale), None for a name that is not sample `index`'s staging."""
    prefix = f".{sample_name(index)}."
    if not name.startswith(prefix):
        return None
    head, dot, _ = name[len(prefix):].partition(".")
    return int(head) if dot and head.isdigit() else -1


def remove_stale_staging(out_dir: Path, index: int) -> list[Path]:
    """Remove sample `index`'s staging folders in `out_dir` whose creator process is dead; returns them."""
    removed = []
    for path in Path(out_dir).glob(f".{sample_name(index)}.*"):
        pid = staging_pid(path.name, index)
        if pid is not None and path.is_dir() and not (pid > 0 and process_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def check_samples_out(out: str | os.PathLike) -> None:
    """Refuse an --out for single samples that is a file, or a folder holding another run's sample folders
    (use a new or empty folder: no sample is replaced, no older one left beside new ones)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; generate writes a folder (OUT/sample_000, ...): name a new "
                          f"or empty folder")
    if out.is_dir():
        try:
            held = sorted(p.name for p in out.iterdir() if p.name.startswith("sample_"))
        except OSError as exc:
            raise OutputError(f"cannot read --out {out}: {exc.strerror or exc}") from None
        if held:
            raise OutputError(f"--out {out} already holds samples of another run ({', '.join(held[:3])}"
                              f"{', ...' if len(held) > 3 else ''}); use a new or empty folder")


def write_sample(out_dir: Path, index: int, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
                 record: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / sample_name(index)
    remove_stale_staging(out_dir, index)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=out_dir))
    try:
        save_volume(Volume(image.astype(np.float32), affine), staging / "image.nii.gz", dtype=np.float32)
        save_volume(Volume(label.astype(np.int16), affine), staging / "label.nii.gz", dtype=np.int16)
        write_preview(image, label, staging / "preview.png",
                      f"SYNTHETIC  asked {record['asked_ml']:.1f} mL, got {record['got_ml']:.1f} mL, "
                      f"seed {record['seed']}")
        (staging / "sample.json").write_text(json.dumps(record, indent=2) + "\n")
        os.chmod(staging, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
