"""The scans of the comparison: two real heads without labels (Colin27 and pycortex's S1, both placed in the
peers' data folder by benchmarks/install_peers.sh) and, optionally, hold-out cases with label maps.

A hold-out folder is a samples folder (sample_*/image.nii.gz + label.nii.gz, as `generate` writes them) or an
nnU-Net raw dataset (imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz + dataset.json); its label maps are read
into FreeSurfer numbers by training.evaluation.scoring.discover.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from VentricleSynthLib.errors import RequestError

REAL_HEADS = {"colin27": "colin27.nii.gz", "s1": "s1.nii.gz"}


@dataclass(frozen=True)
class Scan:
    name: str
    image: Path
    label: Callable | None = None  # loader of its label map (a Volume in FreeSurfer numbers), when it has one


def real_heads(data: Path) -> list[Scan]:
    scans = [Scan(name, Path(data) / file) for name, file in REAL_HEADS.items()]
    for scan in scans:
        if not scan.image.is_file():
            raise RequestError(f"scan {scan.name} not found at {scan.image} (bash benchmarks/install_peers.sh "
                               f"puts it there)")
    return scans


def holdouts(folder: Path) -> list[Scan]:
    from VentricleSynthLib.io.nnunet_raw import image_path
    from training.evaluation.scoring import discover

    folder = Path(folder)
    if not folder.is_dir():
        raise RequestError(f"--holdout {folder} is not a folder")
    nnunet = (folder / "labelsTr").is_dir()
    scans = []
    for case, label in discover(folder).items():
        image = image_path(folder, case) if nnunet else folder / case / "image.nii.gz"
        if not image.is_file():
            raise RequestError(f"hold-out case {case}: image {image} not found")
        scans.append(Scan(f"holdout-{case}", image, label))
    return scans
