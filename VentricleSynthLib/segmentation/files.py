"""Segment a file: a T1 NIfTI in, its ventricle label map written atomically on the input's own grid, the
volumes as a JSON-ready report (the `segment` command).

Geometry: the segmentation is computed in the world frame ITK-based viewers show for the input
(`io.nifti.viewer_affine`: the qform when it disagrees with an sform of code other than 1, as ITK 5.4 does),
so a left label lies on the side Slicer calls left. The label map is written on the input's own voxel grid
with the input's header geometry copied (qform, sform and their codes): it overlays the input voxel for voxel
in every viewer, whichever transform that viewer prefers. Disagreeing or missing orientations are warnings.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import OutputError
from VentricleSynthLib.io.atomic import refuse_overwriting_inputs, writable_dir
from VentricleSynthLib.io.nifti import is_nifti_path, load_image, orientation_warnings, save_volume, viewer_affine
from VentricleSynthLib.progress import ProgressCallback
from VentricleSynthLib.segmentation.input_checks import check_input
from VentricleSynthLib.segmentation.predictor import get_segmenter


def _check_out_path(out_path: str | os.PathLike, image_path) -> Path:
    out = Path(out_path)
    refuse_overwriting_inputs(out, image_path)
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
    out = _check_out_path(out_path, image_path)
    volume = load_image(image_path)
    geometry_warnings = orientation_warnings(volume)
    volume.affine = viewer_affine(volume)
    check_input(volume, allow_thick_slices)  # refuse bad inputs before loading the model
    segmenter = get_segmenter(models, device, tta)
    label, result = segmenter.segment(volume, allow_thick_slices=allow_thick_slices, progress=progress)
    result["warnings"] = geometry_warnings + result["warnings"]
    save_volume(label, out, dtype=np.int16, geometry_of=volume.header)
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
