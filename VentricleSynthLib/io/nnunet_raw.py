"""Read and write nnU-Net v2 raw datasets (imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json).

nnU-Net needs consecutive label values, so label files hold the schema's consecutive indices;
`dataset.json` names them and keeps the index -> FreeSurfer table under "freesurfer_labels" so the
data read back in the schema. Cases are written atomically; `cases.csv` carries per-case volumes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.io.nifti import Volume, load_image, save_volume
from VentricleSynthLib.labels import LABELS, SCHEMA, label_name, to_indices

FILE_ENDING = ".nii.gz"


def image_path(root: Path, case: str, split_dir: str = "imagesTr") -> Path:
    return Path(root) / split_dir / f"{case}_0000{FILE_ENDING}"


def label_path(root: Path, case: str, split_dir: str = "labelsTr") -> Path:
    return Path(root) / split_dir / f"{case}{FILE_ENDING}"


def schema_dataset_json(num_training: int, channel: str = "T1", labels: tuple[int, ...] = LABELS,
                        extra: dict | None = None, union_region: str | None = None) -> dict:
    """dataset.json for label files holding consecutive indices of `labels` (FreeSurfer numbers).

    With `union_region` (a name), the targets are nnU-Net regions: the union of every label, then each label
    on its own (`regions_class_order` paints them in that order).
    """
    names = {label_name(lab) if lab else "background": i for i, lab in enumerate(labels)}
    data = {"channel_names": {"0": channel}, "labels": names}
    if union_region is not None:
        foreground = list(range(1, len(labels)))
        data["labels"] = {"background": 0, union_region: foreground, **{k: v for k, v in names.items() if v}}
        data["regions_class_order"] = [1, *foreground]
    data.update({
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "freesurfer_labels": {str(i): int(lab) for i, lab in enumerate(labels)},
    })
    data.update(extra or {})
    return data


def write_case(root: Path, case: str, image: Volume, label: Volume | None,
               images_dir: str = "imagesTr", labels_dir: str = "labelsTr") -> None:
    """Write one case: image as float32, label (FreeSurfer numbers) as consecutive uint8 indices."""
    save_volume(image, image_path(root, case, images_dir), dtype=np.float32)
    if label is not None:
        save_volume(Volume(to_indices(label.array), label.affine), label_path(root, case, labels_dir),
                    dtype=np.uint8)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{root}: not an nnU-Net raw dataset (no dataset.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def index_to_freesurfer(dataset: dict) -> dict[int, int]:
    """The label-file value -> FreeSurfer label table of a dataset.json (by stored table, else by names)."""
    if "freesurfer_labels" in dataset:
        return {int(k): int(v) for k, v in dataset["freesurfer_labels"].items()}
    by_name = {name.lower(): lab for lab, (name, _) in SCHEMA.items()}
    by_name["background"] = 0
    table = {}
    for name, value in dataset.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(f"dataset.json label {name!r} is a region (list); only plain labels are supported")
        if name.lower() not in by_name:
            raise DatasetError(
                f"dataset.json label {name!r} is not a FreeSurfer/SynthSeg name; add a 'freesurfer_labels' table"
            )
        table[int(value)] = by_name[name.lower()]
    return table


def list_cases(root: Path, images_dir: str = "imagesTr") -> list[str]:
    folder = Path(root) / images_dir
    if not folder.is_dir():
        raise DatasetError(f"{root}: missing folder {images_dir}/")
    suffix = f"_0000{FILE_ENDING}"
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))


def load_case(root: Path, case: str, dataset: dict | None = None) -> tuple[Volume, Volume]:
    """Read one case back as (image, label map in FreeSurfer numbers)."""
    from VentricleSynthLib.io.nifti import load_label_map
    from VentricleSynthLib.labels import LabelMapping

    dataset = dataset or read_dataset_json(root)
    mapping = LabelMapping("dataset.json", index_to_freesurfer(dataset))
    return load_image(image_path(root, case)), load_label_map(label_path(root, case), mapping=mapping)


