"""Random deformations for the template cohort: smooth random velocity fields and affines.

The flow primitives (integration, sampling, the ventricle attraction field) live in
VentricleSynthLib.imaging.flows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from VentricleSynthLib.imaging.geometry import Grid


def random_velocity(grid: Grid, rng: np.random.Generator, amplitude_mm: float, control_points: int = 5) -> np.ndarray:
    """A smooth random velocity field: Gaussian noise on a coarse lattice, cubic-upsampled to `grid`."""
    coarse = rng.normal(0.0, amplitude_mm, size=(3, control_points, control_points, control_points))
    zoom = [s / control_points for s in grid.shape]
    return np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest")[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
                     for c in coarse]).astype(np.float32)


def random_affine(rng: np.random.Generator, max_rotation_deg: float, scale_range: tuple[float, float],
                  max_translation_mm: float) -> np.ndarray:
    """A 4x4 world transform about the origin: rotation (each axis), per-axis scale, translation."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rz @ ry @ rx @ np.diag(rng.uniform(*scale_range, 3))
    out[:3, 3] = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return out
