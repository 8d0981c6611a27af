"""Segment a file: a T1 NIfTI in, its ventricle label map written atomically on the input's own grid, the
volumes as a JSON-ready report (the `segment` command)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import writable_dir
from VentricleSynthLib.io.nifti import is_nifti_path, load_image, save_volume
from VentricleSynthLib.progress import ProgressCallback
from VentricleSynthLib.segmentation.input_checks import check_input
from VentricleSynthLib.segmentation.predictor import get_segmenter


def _check_out_path(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    if not is_nifti_path(out):
        raise OutputError(f"--out {out}: the segmentation is written as NIfTI; use a .nii.gz or .nii file name")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give a file name such as seg.nii.gz")
    writable_dir(out.parent, shown=out)
    return out


def segment_file(image_path, out_path, device: str | None = "auto", tta: bool = False, models=None,
                 progress: ProgressCallback | None = None, allow_thick_slices: bool = False) -> dict:
    """Segment the ventricles of a T1 file; write the label map on the input's grid; return the JSON report."""
    start = time.perf_counter()
    out = _check_out_path(out_path)
    volume = load_image(image_path)
    check_input(volume, allow_thick_slices)  # refuse bad inputs before loading the model
    segmenter = get_segmenter(models, device, tta)
    label, result = segmenter.segment(volume, allow_thick_slices=allow_thick_slices, progress=progress)
    save_volume(label, out, dtype=np.int16)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return {"image": str(image_path), "out": str(out), **result}


def segment_command(args) -> int:
    """`python -m VentricleSynthLib segment IMAGE --out SEG.nii.gz [--device D] [--tta] [--models DIR]`."""
    def progress(stage, i, n):
        print(f"PROGRESS stage={stage} step={i}/{n}", file=sys.stderr, flush=True)

    result = segment_file(args.image, args.out, device=getattr(args, "device", "auto"),
                          tta=bool(getattr(args, "tta", False)), models=getattr(args, "models", None),
                          progress=progress if getattr(args, "progress", False) else None,
                          allow_thick_slices=bool(getattr(args, "allow_thick_slices", False)))
    print(json.dumps(result), flush=True)
    return 0
