"""Scoring ventricle segmentations against references (stage `evaluate`, the experiment, the segmenter's card).

`python training/train.py evaluate --pred [NAME=]DIR [--pred ...] --ref DIR --out DIR
[--pred-mapping SPEC ...] [--ref-mapping SPEC]`

Metrics are on the binary union of the six ventricle labels (4, 43, 5, 44, 14, 15), as in the
paper's code: Dice, IoU, volumes in mL (|dV| and signed dV = pred - ref), and HD95 in mm.
HD95 is the symmetric 95th-percentile surface distance: the larger of the two directed 95th
percentiles of distances from the surface voxels of one mask to the nearest surface voxel of the
other (surface = mask voxels with a 6-neighbour outside; distances between voxel centres in mm,
anisotropic spacing honoured). Conventions for empty masks: both empty -> Dice 1, IoU 1, HD95 0;
exactly one empty -> Dice 0, IoU 0, HD95 inf (reported as a count, left out of the HD95 mean).
Mean +- SD use the sample SD (ddof=1).

Folders: a folder of `CASE.nii.gz` label maps, an nnU-Net raw dataset (`labelsTr/` + dataset.json,
whose index -> FreeSurfer table is applied), or generated samples (`sample_*/label.nii.gz`).
Label conventions: FreeSurfer/SynthSeg numbers by default; `--*-mapping cerebra` or a CSV
(`source,target`) for others. Prediction and reference of a case must share one voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.io.nifti import NIFTI_SUFFIXES, Volume, check_same_grid, load_label_map
from VentricleSynthLib.io.nnunet_raw import index_to_freesurfer, read_dataset_json
from VentricleSynthLib.labels import (VENTRICLE_LABELS, LabelMapping, mapping_from_spec)
from VentricleSynthLib.metrics import dice, hd95, iou
from VentricleSynthLib.volumes import voxel_volume_ml

STRIP_SUFFIXES = ("_seg", "_label", "_labels", "_pred", "_synthseg", "_aseg", "_ventricles")


# --- metrics -----------------------------------------------------------------------------------------

def compare(pred: Volume, ref: Volume, case: str = "") -> dict:
    """Every metric of one case on the ventricle union; refuses different voxel grids."""
    what = f"case {case}: prediction and reference" if case else "prediction and reference"
    check_same_grid(pred, ref, what=what)
    p = np.isin(pred.array, VENTRICLE_LABELS)
    r = np.isin(ref.array, VENTRICLE_LABELS)
    voxel = voxel_volume_ml(ref.affine)
    ref_ml, pred_ml = float(r.sum()) * voxel, float(p.sum()) * voxel
    return {
        "case": case,
        "ref_ml": ref_ml,
        "pred_ml": pred_ml,
        "abs_dv_ml": abs(pred_ml - ref_ml),
        "signed_dv_ml": pred_ml - ref_ml,
        "dice": dice(p, r),
        "iou": iou(p, r),
        "hd95_mm": hd95(p, r, ref.spacing),
    }


# --- reading label maps --------------------------------------------------------------------------

def _case_id(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover(folder: Path, mapping=None) -> dict[str, Callable[[], Volume]]:
    """case id -> loader of its label map (FreeSurfer numbers) for any supported folder layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    explicit = mapping_from_spec(mapping)
    if (folder / "dataset.json").is_file() and (folder / "labelsTr").is_dir():
        table = explicit or LabelMapping("dataset.json", index_to_freesurfer(read_dataset_json(folder)))
        files = {_case_id(p.name): p for p in sorted((folder / "labelsTr").iterdir()) if _case_id(p.name) != p.name}
    else:
        table = explicit
        files = {_case_id(p.name): p for p in sorted(folder.iterdir())
                 if p.is_file() and not p.name.startswith(".") and _case_id(p.name) != p.name}
        for sample in sorted(folder.glob("sample_*")):
            if (sample / "label.nii.gz").is_file():
                files[sample.name] = sample / "label.nii.gz"
    if not files:
        raise DatasetError(f"{folder}: no label maps found (expected CASE.nii.gz files, labelsTr/ of an nnU-Net "
                           f"dataset, or sample_*/label.nii.gz)")
    return {case: (lambda p=path: load_label_map(p, table, allow_empty=True)) for case, path in files.items()}


def _strip(case: str) -> str:
    for suffix in STRIP_SUFFIXES:
        if case.lower().endswith(suffix):
            return case[: -len(suffix)]
    return case


def match_cases(pred: dict, ref: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(pred id, ref id) pairs by exact id, else after removing suffixes like _seg/_pred; and the unmatched refs."""
    pairs, missing = [], []
    by_stripped = {_strip(k): k for k in pred}
    for case in sorted(ref):
        if case in pred:
            pairs.append((case, case))
        elif _strip(case) in by_stripped:
            pairs.append((by_stripped[_strip(case)], case))
        else:
            missing.append(case)
    return pairs, missing


def matched_cases(preds: dict, refs: dict, pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """`match_cases`, refusing a prediction set that matches no reference case."""
    pairs, missing = match_cases(preds, refs)
    if not pairs:
        raise DatasetError(f"no case of {pred_dir} matches a reference case in {ref_dir} "
                           f"(reference ids e.g. {', '.join(sorted(refs)[:3])})")
    return pairs, missing


def evaluate_folder(pred_dir: Path, ref_dir: Path, pred_mapping=None, ref_mapping=None,
                    refs: dict | None = None, preds: dict | None = None) -> tuple[list[dict], list[str]]:
    """Per-case metrics of one prediction set; the reference cases it has no prediction for."""
    preds = preds if preds is not None else discover(pred_dir, pred_mapping)
    refs = refs if refs is not None else discover(ref_dir, ref_mapping)
    pairs, missing = matched_cases(preds, refs, pred_dir, ref_dir)
    return [compare(preds[p](), refs[r](), case=r) for p, r in pairs], missing


# --- prediction sets ----------------------------------------------------------------------------------

@dataclass
class PredictionSet:
    """One named folder of predicted label maps and its label convention."""

    name: str
    folder: Path
    mapping: str | None = None


def parse_pred_specs(specs: list[str], mappings: list[str] | None = None) -> list[PredictionSet]:
    """`[NAME=]DIR` specs (name defaults to the folder name); mappings: none, one for all, or one per set."""
    mappings = list(mappings or [])
    if len(mappings) not in (0, 1, len(specs)):
        raise DatasetError(f"--pred-mapping: give one mapping for all {len(specs)} prediction sets or one per set, "
                           f"not {len(mappings)}")
    sets, names = [], set()
    for i, spec in enumerate(specs):
        name, sep, folder = str(spec).partition("=")
        if not sep or not name or Path(spec).exists():
            name, folder = Path(spec).name, str(spec)
        if name in names:
            raise DatasetError(f"two prediction sets are named {name!r}; name them with NAME=DIR")
        names.add(name)
        mapping = mappings[i] if len(mappings) == len(specs) else (mappings[0] if mappings else None)
        sets.append(PredictionSet(name, Path(folder), mapping))
    return sets
