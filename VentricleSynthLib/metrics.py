"""Agreement of two binary masks: Dice, IoU and the 95th-percentile Hausdorff distance (HD95).

Conventions for empty masks: both empty -> Dice 1, IoU 1, HD95 0; exactly one empty -> Dice 0, IoU 0,
HD95 inf. HD95 is the symmetric 95th-percentile surface distance: the larger of the two directed 95th
percentiles of distances from the surface voxels of one mask to the nearest surface voxel of the other
(surface = mask voxels with a 6-neighbour outside; distances between voxel centres in mm, anisotropic
spacing honoured).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one 6-neighbour outside the mask (or outside the array)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def directed_surface_distances(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from each surface voxel of `src` to the nearest surface voxel of `dst` (both non-empty)."""
    s_src, s_dst = surface(src), surface(dst)
    return ndimage.distance_transform_edt(~s_dst, sampling=spacing)[s_src]


def hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (see the module notes for empty masks)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    has_a, has_b = a.any(), b.any()
    if not has_a and not has_b:
        return 0.0
    if not has_a or not has_b:
        return math.inf
    # crop to the union's box (+1 voxel): every surface voxel lies inside, so distances are exact
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = np.minimum(idx.max(axis=0) + 2, a.shape)
    box = tuple(slice(int(start), int(stop)) for start, stop in zip(lo, hi))
    a, b = a[box], b[box]
    spacing = [float(s) for s in spacing]
    d_ab = directed_surface_distances(a, b, spacing)
    d_ba = directed_surface_distances(b, a, spacing)
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
