"""The segmenter's training cases and their nnU-Net raw dataset (first step of the `segmenter` stage).

The template cohort's natural cases (train and val splits; `segmenter.datasets`) and, optionally, synthetic pairs
(`--synthetic DIR`: `sample_*/{image,label}.nii.gz` or an nnU-Net raw dataset) are exported to an nnU-Net raw
dataset WORK/nnunet/raw/Dataset5xx_*/ whose labels are 0 = background and 1..6 = the six ventricle labels
(FreeSurfer 4, 43, 5, 44, 14, 15; the table is kept in dataset.json). Images stay on the profile grid, as the
`segment` command feeds them. `splits_final.json` fold 0 keeps the template cohort's own val split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.imaging.profile import Profile, to_profile
from VentricleSynthLib.io.atomic import write_csv, write_json
from VentricleSynthLib.io.nifti import Volume, check_same_grid, load_image, load_label_map, save_volume
from VentricleSynthLib.io.nnunet_raw import list_cases, load_case, read_csv, read_dataset_json, schema_dataset_json
from VentricleSynthLib.segmentation.decision import SEGMENTER_LABELS, UNION_REGION, to_segmenter_indices

from training.segmenter.appearance import training_labels


@dataclass
class Case:
    """One training case of the segmenter, loaded on demand."""

    case_id: str  # nnU-Net identifier in the exported dataset
    origin: str  # "natural/natural_0003", "synthetic/sample_004", ...
    split: str  # train | val
    load: Callable[[], tuple[Volume, Volume]]  # (image, label map in FreeSurfer numbers)


def dataset_cases(data_root: Path, dataset: str, splits=("train", "val")) -> list[Case]:
    """The cases of one dataset under WORK/data (the template cohort's or an import) whose split is in `splits`."""
    root = Path(data_root) / dataset
    if not (root / "cases.csv").is_file():
        raise DatasetError(f"{root}: no cases.csv — run `train.py data` for this --work first")
    ds = read_dataset_json(root)
    out = []
    for row in read_csv(root / "cases.csv"):
        split = row.get("split", "train")
        if split in splits:
            case_id = row["case"] if row["case"].startswith(f"{dataset}_") else f"{dataset}_{row['case']}"
            out.append(Case(case_id, f"{dataset}/{row['case']}", split,
                            lambda c=row["case"]: load_case(root, c, ds)))
    return out


def pair_cases(folder: Path, prefix: str = "synth", val_every: int = 0) -> list[Case]:
    """Synthetic pairs: `sample_*/{image,label}.nii.gz` folders or an nnU-Net raw dataset.

    A raw dataset that a synthesize run has not finished (imagesTr/ disagrees with numTraining, or a synthetic
    cohort folder, one with records/, without its cases.csv) is refused rather than trained on in part."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder of synthetic pairs")
    out = []
    if (folder / "dataset.json").is_file():
        ds = read_dataset_json(folder)
        cases = list_cases(folder)
        if (folder / "records").is_dir() and not (folder / "cases.csv").is_file():
            raise DatasetError(f"{folder}: incomplete synthetic dataset (no cases.csv); rerun synthesize to finish it")
        if len(cases) != ds.get("numTraining"):
            raise DatasetError(f"{folder}: incomplete synthetic dataset ({len(cases)} images in imagesTr/, "
                               f"dataset.json says numTraining {ds.get('numTraining')}); rerun synthesize to finish it")
        for i, case in enumerate(cases):
            out.append(Case(f"{prefix}_{i:04d}", f"{folder.name}/{case}", "train",
                            lambda c=case: load_case(folder, c, ds)))
    else:
        samples = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "image.nii.gz").is_file()
                         and (p / "label.nii.gz").is_file())
        for i, sample in enumerate(samples):
            out.append(Case(f"{prefix}_{i:04d}", f"{folder.name}/{sample.name}", "train",
                            lambda s=sample: (load_image(s / "image.nii.gz"), load_label_map(s / "label.nii.gz"))))
    if not out:
        raise DatasetError(f"{folder}: no synthetic pairs (expected sample_*/image.nii.gz + label.nii.gz, "
                           f"or an nnU-Net raw dataset)")
    if val_every:
        for i, case in enumerate(out):
            if i % val_every == val_every - 1:
                case.split = "val"
    return out


def _on_profile(image: Volume, label: Volume, profile: Profile) -> tuple[Volume, Volume]:
    """Cases already on a profile grid pass as they are; others are brought there (centred on the brain)."""
    check_same_grid(image, label)
    if image.shape == tuple(profile.shape) and np.allclose(image.spacing, profile.spacing, atol=1e-3) \
            and np.allclose(image.affine[:3, :3], np.diag(image.spacing), atol=1e-3) \
            and 0.0 <= float(image.array.min()) and float(image.array.max()) <= 1.0:
        return image, label
    pre = to_profile(profile, image=image, label=label)
    return Volume(pre.image, pre.grid.affine), Volume(pre.label, pre.grid.affine)


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def segmenter_dataset_json(num_training: int, extra: dict | None = None, targets: str = "labels",
                           reader_writer: str | None = None) -> dict:
    """nnU-Net's dataset.json; `targets="union+labels"` declares the regions (see stage_configs.TARGETS), and
    `reader_writer` (stage_configs.READER_WRITERS) names nnU-Net's reader for the images and labels
    (`overwrite_image_reader_writer`; None leaves nnU-Net's own choice by file ending, SimpleITKIO).

    nnU-Net's own region -> label conversion (stock `nnUNetv2_predict`) paints the union as label 1 first and
    then each label region over it; `VentricleSynthLib.segmentation.decision` instead decides ventricle vs background
    by the most likely label region (above the bundle's decision threshold) and names the voxel by it (see
    `union_and_scores`).
    """
    io = {} if reader_writer is None else {"overwrite_image_reader_writer": reader_writer}
    return schema_dataset_json(num_training, labels=SEGMENTER_LABELS, extra={**io, **(extra or {})},
                               union_region=UNION_REGION if targets == "union+labels" else None)


def export_raw(cases: list[Case], raw_root: Path, name: str, profile: Profile, progress=print,
               targets: str = "labels", reader_writer: str | None = None, all_structures: bool = False) -> Path:
    """Write (or finish) the nnU-Net raw dataset; cases no longer asked for are removed. `targets` and
    `reader_writer`: see `segmenter_dataset_json`. `all_structures` keeps every structure in the label files
    (appearance.training_labels: 1..6 ventricles, 7.. the rest, for the random appearance) instead of 0..6."""
    if len({c.case_id for c in cases}) != len(cases):
        raise DatasetError("duplicate case identifiers among the segmenter's training sources")
    root = Path(raw_root) / name
    images, labels = root / "imagesTr", root / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    # keep a written case only if it still comes from the same source (resume); drop everything else
    labels_kind = "all-structures" if all_structures else "ventricles"
    previous = {r["case"]: (r["origin"], r.get("labels", "ventricles")) for r in read_csv(root / "cases.csv")} \
        if (root / "cases.csv").is_file() else {}
    wanted = {c.case_id for c in cases if previous.get(c.case_id) == (c.origin, labels_kind)}
    to_indices = training_labels if all_structures else to_segmenter_indices
    for folder, suffix in ((images, "_0000.nii.gz"), (labels, ".nii.gz")):
        for p in folder.iterdir():
            if p.name.endswith(suffix) and p.name[: -len(suffix)] not in wanted:
                p.unlink()
    (root / "cases.csv").unlink(missing_ok=True)  # rewritten when every case is in place
    rows = []
    for i, case in enumerate(cases, start=1):
        img_path, lab_path = images / f"{case.case_id}_0000.nii.gz", labels / f"{case.case_id}.nii.gz"
        image, label = case.load() if not (img_path.is_file() and lab_path.is_file()) else (None, None)
        if image is not None:
            image, label = _on_profile(image, label, profile)
            save_volume(Volume(image.array.astype(np.float32), image.affine), img_path, dtype=np.float32)
            save_volume(Volume(to_indices(label.array), label.affine), lab_path, dtype=np.uint8)
        rows.append({"case": case.case_id, "origin": case.origin, "split": case.split, "labels": labels_kind})
        if i % 10 == 0 or i == len(cases):
            progress(f"PROGRESS stage=segmenter-export step={i}/{len(cases)} case={case.case_id}")
    write_json(root / "dataset.json", segmenter_dataset_json(len(cases), {
        "name": name, "profile": profile.name,
        "description": "VentricleSynth ventricle segmenter training set (labels 1..6 = FreeSurfer 4,43,5,44,14,15)"},
        targets, reader_writer))
    write_csv(root / "cases.csv", rows, ["case", "origin", "split", "labels"])
    return root


def splits(cases: list[Case]) -> list[dict]:
    """nnU-Net's splits_final.json: fold 0 = our train / val split (a val case from train if there is none)."""
    train = [c.case_id for c in cases if c.split == "train"]
    val = [c.case_id for c in cases if c.split == "val"]
    if not val:
        val = train[-max(1, len(train) // 10):]
        train = [c for c in train if c not in val] or train
    return [{"train": sorted(train), "val": sorted(val)}]
