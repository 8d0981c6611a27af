"""Volumes in millilitres from label maps: ventricles (total and per label), TIV, relative volume; the pieces the
ventricular system falls into."""

from __future__ import annotations

import numpy as np

from VentricleSynthLib.labels import VENTRICLE_LABELS, label_name

# The ventricular system is six structures (two lateral ventricles, their inferior horns, the 3rd and the 4th); a
# label map whose ventricles fall into more 26-connected pieces than that, every voxel counted, has islands: it is
# `fragmented`. The one rule for candidate choice, redrawing, refinement and cohort QC.
MAX_VENTRICLE_PIECES = 6


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det| of the 3x3 part (handles anisotropic, oblique, flipped axes)."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def label_volumes_ml(label_map: np.ndarray, affine: np.ndarray, labels=VENTRICLE_LABELS) -> dict[int, float]:
    voxel = voxel_volume_ml(affine)
    counts = np.bincount(np.asarray(label_map, dtype=np.int64).ravel().clip(min=0),
                         minlength=max(labels) + 1)
    return {int(lab): float(counts[lab]) * voxel for lab in labels}


def ventricle_volume_ml(label_map: np.ndarray, affine: np.ndarray) -> float:
    """Volume of the ventricular system (union of the six ventricle labels) in mL."""
    return float(np.isin(label_map, VENTRICLE_LABELS).sum()) * voxel_volume_ml(affine)


def ventricle_pieces(label_map: np.ndarray) -> tuple[int, float]:
    """(number of 26-connected pieces of the ventricles, fraction of their volume in the largest)."""
    from VentricleSynthLib.morphology import connected_components, piece_sizes  # scipy: not in Slicer's Python

    pieces, n = connected_components(np.isin(label_map, VENTRICLE_LABELS), full_connectivity=True)
    if n == 0:
        return 0, 0.0
    sizes = piece_sizes(pieces, n)
    return n, float(sizes.max() / sizes.sum())


def too_many_pieces(pieces: int) -> bool:
    """The fragmentation rule on a count of ventricle pieces (`ventricle_pieces`): more than MAX_VENTRICLE_PIECES."""
    return pieces > MAX_VENTRICLE_PIECES


def fragmented(label_map: np.ndarray) -> bool:
    """Ventricles in more than MAX_VENTRICLE_PIECES pieces; no ventricles at all is not 'fragmented'."""
    return too_many_pieces(ventricle_pieces(label_map)[0])


def tiv_ml(label_map: np.ndarray, affine: np.ndarray) -> float:
    """Total intracranial volume: every non-background voxel of the label map (brain + CSF), in mL."""
    return float(np.count_nonzero(label_map)) * voxel_volume_ml(affine)


def volume_report(label_map: np.ndarray, affine: np.ndarray) -> dict:
    """JSON-ready summary: total ventricle mL, per-label mL (by name), TIV and relative volume."""
    per_label = label_volumes_ml(label_map, affine)
    total = ventricle_volume_ml(label_map, affine)
    tiv = tiv_ml(label_map, affine)
    return {
        "ventricle_ml": round(total, 3),
        "per_label_ml": {label_name(k): round(v, 3) for k, v in per_label.items()},
        "tiv_ml": round(tiv, 3),
        "relative_volume": round(total / tiv, 6) if tiv > 0 else None,
    }
