"""How the network's outputs become FreeSurfer ventricle labels: the index <-> label table and the decision rule.

nnU-Net needs consecutive labels: index i of the network <-> FreeSurfer label SEGMENTER_LABELS[i].
"""

from __future__ import annotations

import numpy as np

from VentricleSynthLib.errors import InvalidImageError
from VentricleSynthLib.labels import VENTRICLE_LABELS

# nnU-Net needs consecutive labels: index i of the network <-> FreeSurfer label SEGMENTER_LABELS[i].
SEGMENTER_LABELS: tuple[int, ...] = (0, *VENTRICLE_LABELS)  # 0, 4, 43, 5, 44, 14, 15

# Region-trained bundles (`targets: union+labels`) declare the ventricular system as this nnU-Net region first
# (a training target; at inference the label regions decide, see `union_and_scores`).
UNION_REGION = "Ventricular-System"

# Voxels whose union probability is at most this are never resampled onto the input grid (`Segmenter.to_input`),
# so a decision threshold must lie above it.
MIN_THRESHOLD = 0.02


def to_segmenter_indices(label_map: np.ndarray, labels: tuple[int, ...] = SEGMENTER_LABELS) -> np.ndarray:
    """FreeSurfer numbers -> positions in `labels` (by default 0..6, the six ventricle labels); every label not in
    `labels` becomes background 0."""
    arr = np.asarray(label_map, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise InvalidImageError("label map has negative values")
    lut = np.zeros(max(max(labels), int(arr.max(initial=0))) + 1, dtype=np.uint8)
    for i, lab in enumerate(labels):
        lut[lab] = i
    return lut[arr]


def from_segmenter_indices(indices: np.ndarray, table: dict[int, int] | None = None) -> np.ndarray:
    """Network indices -> FreeSurfer numbers (int16), by `table` (index -> label) or SEGMENTER_LABELS."""
    table = table or dict(enumerate(SEGMENTER_LABELS))
    lut = np.zeros(max(table) + 1, dtype=np.int16)
    for i, lab in table.items():
        lut[int(i)] = int(lab)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= lut.size):
        raise ValueError(f"class index out of range 0..{lut.size - 1}")
    return lut[idx]


def union_and_scores(outputs: np.ndarray, union_head: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ventricles' union probability and the six label scores from the network's outputs (C, ...).

    Softmax models (background + six labels): the union is the sum of the six label probabilities.
    Region models (union region + six label regions, sigmoid): the union is the most likely label region;
    the union head is a training target only. Measured on the cpu bundle's validation split (23 natural
    cases): union head > 0.5 gave Dice 0.806 and volume MAE 4.5 mL (under-segmentation and stray distant
    voxels), the most likely label region 0.863 and 1.2 mL. Either way a voxel is ventricle where the union
    exceeds the decision threshold (0.5 unless the bundle's config sets `decision.union_threshold`) and is
    named by the highest label score.
    """
    outputs = np.asarray(outputs)
    return (outputs[1:].max(axis=0) if union_head else outputs[1:].sum(axis=0)), outputs[1:]


def labels_from_outputs(outputs: np.ndarray, union_head: bool, table: dict[int, int] | None = None,
                        threshold: float = 0.5) -> np.ndarray:
    """FreeSurfer ventricle labels from the network's outputs on their own grid (see `union_and_scores`)."""
    union, scores = union_and_scores(outputs, union_head)
    return from_segmenter_indices(np.where(union > threshold, scores.argmax(axis=0) + 1, 0), table)
