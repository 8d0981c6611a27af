"""Writing generated samples: DIR/sample_000/{image.nii.gz,label.nii.gz,preview.png,sample.json}.

A sample folder is assembled in a hidden temporary sibling and renamed into place, so a reader
(or an interrupted run) never sees half a sample.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from VentricleSynthLib.io.figures import png_figure
from VentricleSynthLib.io.montage import draw_outlined, ventricle_views
from VentricleSynthLib.io.nifti import Volume, save_volume


def write_preview(image: np.ndarray, label: np.ndarray, path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the ventricles, ventricles outlined."""
    with png_figure(path, dpi=80, ncols=3, figsize=(9, 3.4)) as (fig, axes):
        for ax, (img, msk) in zip(axes, ventricle_views(image, label, n_views=3)):
            draw_outlined(ax, img, msk)
        fig.suptitle(title, fontsize=9)


def write_sample(out_dir: Path, index: int, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
                 record: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"sample_{index:03d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out_dir))
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
