"""What a 4x4 voxel->RAS (mm) affine says about its voxels."""

from __future__ import annotations

import numpy as np


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm along i, j, k: the lengths of the affine's three columns (any rotation, flips)."""
    affine = np.asarray(affine)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
