"""Training arrays: the datasets under WORK/data (nnU-Net raw) read into memory in the schema, for the generators."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import DatasetError
from VentricleSynthLib.labels import to_indices
from VentricleSynthLib.io.nnunet_raw import load_case, read_csv, read_dataset_json
from VentricleSynthLib.volumes import ventricle_volume_ml


@dataclass
class TrainingArrays:
    images: np.ndarray  # (N, X, Y, Z) float32 in [0, 1]
    indices: np.ndarray  # (N, X, Y, Z) uint8 consecutive class indices
    ventricle_ml: np.ndarray  # (N,)
    affine: np.ndarray  # the shared profile-grid affine
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def load_training_arrays(data_root: Path, datasets: list[str], splits: tuple[str, ...] = ("train",)) -> TrainingArrays:
    """Every case of `datasets` (folders under WORK/data) whose split is in `splits`."""
    images, indices, volumes, names, affine = [], [], [], [], None
    for name in datasets:
        root = Path(data_root) / name
        if not (root / "cases.csv").is_file():
            raise DatasetError(f"{root}: no cases.csv — run `train.py data` for this --work first")
        dataset = read_dataset_json(root)
        for row in read_csv(root / "cases.csv"):
            if row.get("split", "train") not in splits:
                continue
            image, label = load_case(root, row["case"], dataset)
            if affine is None:
                affine = image.affine
            elif image.shape != images[0].shape:
                raise DatasetError(f"{root}: case {row['case']} has shape {image.shape}, expected {images[0].shape}")
            images.append(image.array.astype(np.float32))
            indices.append(to_indices(label.array))
            volumes.append(ventricle_volume_ml(label.array, label.affine))
            names.append(f"{name}/{row['case']}")
    if not names:
        raise DatasetError(f"no training cases with split {splits} in {', '.join(datasets)} under {data_root}")
    return TrainingArrays(np.stack(images), np.stack(indices), np.asarray(volumes, np.float32), affine, names)


def random_patch(shape: tuple[int, ...], patch: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, ...]:
    """A random window of `patch` voxels inside `shape` (the whole axis where the patch is larger)."""
    out = []
    for size, p in zip(shape, patch):
        p = min(size, p)
        start = int(rng.integers(0, size - p + 1))
        out.append(slice(start, start + p))
    return tuple(out)
