"""Where a synthetic cohort's samples live on disk, and when a sample counts as complete.

`nnunet`: an nnU-Net v2 raw dataset, which the segmenter stages read as is:
    OUT/imagesTr/synth_0007_0000.nii.gz   image, float32 in [0, 1]
    OUT/labelsTr/synth_0007.nii.gz        label map as the schema's consecutive indices (uint8)
    OUT/records/synth_0007.json           the sample's record, written last: it marks the sample complete
    OUT/dataset.json, OUT/cases.csv       rebuilt from the records whenever a run ends
`samples`: the `generate` layout, OUT/sample_007/{image.nii.gz,label.nii.gz,preview.png,sample.json}; each
    folder is assembled aside and renamed into place, its sample.json being the record.

Samples that `--qc-min-dice` turns away live under OUT/rejected/ in the same layout (kept for inspection,
outside the dataset). Only the process that owns an index writes its files. A kill can leave staging files,
or (nnunet) dataset files whose record was not written yet; `clear(index)` removes all of them, and the
owner calls it for every incomplete index when it starts, so no reader finds files without a record.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from VentricleSynthLib.generation.sample_folder import remove_stale_staging, write_sample
from VentricleSynthLib.io.atomic import write_csv, write_json
from VentricleSynthLib.io.nifti import Volume, load_image, load_label_map
from VentricleSynthLib.io.nnunet_raw import image_path, label_path, load_case, schema_dataset_json, write_case
from VentricleSynthLib.labels import LABELS

FORMATS = ("nnunet", "samples")
REJECTED = "rejected"


class NnunetLayout:
    format = "nnunet"

    def __init__(self, root: Path):
        self.root = Path(root)

    def case(self, index: int) -> str:
        return f"synth_{index:04d}"

    def _record_path(self, index: int) -> Path:
        return self.root / "records" / f"{self.case(index)}.json"

    def _paths(self, index: int, keep: bool) -> list[Path]:
        base = self.root if keep else self.root / REJECTED
        return [label_path(base, self.case(index)), image_path(base, self.case(index))]  # label first: see write

    def is_complete(self, index: int) -> bool:
        return self._record_path(index).is_file()

    def read_record(self, index: int) -> dict:
        return json.loads(self._record_path(index).read_text())

    def clear_staging(self, index: int) -> None:
        """Remove the sample's staging folder; the staging root goes with the last one. A complete sample can
        have one left: a kill between writing its record and removing the (by then empty) folder."""
        staging = self.root / ".partial" / self.case(index)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.rmdir()
        except OSError:
            pass

    def clear(self, index: int) -> None:
        """Remove whatever an interrupted write of an incomplete sample left (staging, dataset files, record)."""
        self.clear_staging(index)
        for p in (self.root / "records").glob(f".{self.case(index)}.json.*"):  # an interrupted record write
            p.unlink(missing_ok=True)
        for p in self._paths(index, True) + self._paths(index, False):
            p.unlink(missing_ok=True)

    def write(self, index: int, image: np.ndarray, label: np.ndarray, affine: np.ndarray, record: dict,
              keep: bool = True) -> None:
        """Stage both files, rename the label then the image into place, then write the record.

        A reader listing imagesTr/ never finds an image without its label; a sample without its record
        is cleared and redone by its owner."""
        self.clear(index)
        staging = self.root / ".partial" / self.case(index)
        write_case(staging, self.case(index), Volume(image.astype(np.float32), affine), Volume(label, affine))
        staged = [label_path(staging, self.case(index)), image_path(staging, self.case(index))]
        for src, dst in zip(staged, self._paths(index, keep)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        write_json(self._record_path(index), record)
        self.clear_staging(index)

    def included(self, index: int) -> bool:
        return image_path(self.root, self.case(index)).is_file()

    def records(self) -> list[dict]:
        folder = self.root / "records"
        records = [json.loads(p.read_text()) for p in folder.glob("synth_*.json")] if folder.is_dir() else []
        return sorted(records, key=lambda r: r["index"])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        base = self.root if self.included(index) else self.root / REJECTED
        image, label = load_case(base, self.case(index), schema_dataset_json(0))
        return image.array, label.array

    def finish(self, rows: list[dict], fields: list[str], extra: dict) -> None:
        included = sum(1 for r in rows if r["included"])
        write_json(self.root / "dataset.json", schema_dataset_json(included, labels=LABELS, extra=extra))
        write_csv(self.root / "cases.csv", rows, fields)


class SamplesLayout:
    format = "samples"

    def __init__(self, root: Path):
        self.root = Path(root)

    def case(self, index: int) -> str:
        return f"sample_{index:03d}"  # as samples.write_sample names it

    def _folder(self, index: int, keep: bool) -> Path:
        return (self.root if keep else self.root / REJECTED) / self.case(index)

    def _existing(self, index: int) -> Path | None:
        return next((f for f in (self._folder(index, True), self._folder(index, False))
                     if (f / "sample.json").is_file()), None)

    def is_complete(self, index: int) -> bool:
        return self._existing(index) is not None

    def read_record(self, index: int) -> dict:
        return json.loads((self._existing(index) / "sample.json").read_text())

    def clear(self, index: int) -> None:
        """Remove staging folders an interrupted (killed) write left; a live process's are kept (a sample folder
        only appears whole)."""
        for parent in (self.root, self.root / REJECTED):
            if parent.is_dir():
                remove_stale_staging(parent, index)

    clear_staging = clear  # a live process's staging is kept either way

    def write(self, index: int, image: np.ndarray, label: np.ndarray, affine: np.ndarray, record: dict,
              keep: bool = True) -> None:
        self.clear(index)
        shutil.rmtree(self._folder(index, not keep), ignore_errors=True)
        write_sample(self._folder(index, keep).parent, index, image, label, affine, record)

    def included(self, index: int) -> bool:
        return (self._folder(index, True) / "sample.json").is_file()

    def records(self) -> list[dict]:
        paths = list(self.root.glob("sample_*/sample.json")) + list((self.root / REJECTED).glob("sample_*/sample.json"))
        records = [json.loads(p.read_text()) for p in paths]
        return sorted((r for r in records if "index" in r), key=lambda r: r["index"])  # cohort samples only

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        folder = self._existing(index)
        return load_image(folder / "image.nii.gz").array, load_label_map(folder / "label.nii.gz").array

    def finish(self, rows: list[dict], fields: list[str], extra: dict) -> None:
        write_csv(self.root / "cases.csv", rows, fields)


def make_layout(fmt: str, root: Path):
    return {"nnunet": NnunetLayout, "samples": SamplesLayout}[fmt](root)
