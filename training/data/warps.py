"""Smooth, invertible-in-the-continuum deformations for the template cohort.

Displacements are world-space (mm) pull-back fields: a warped volume at x samples the source at
x + d(x). Stationary velocity fields are integrated by scaling and squaring, which gives the
diffeomorphic warps that SynthSeg-style augmentation and ventricle resizing need.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from VentricleSynthLib.imaging.geometry import Grid, resample
from VentricleSynthLib.affines import spacing_of


def sample_field(field: np.ndarray, grid: Grid, world_points: np.ndarray) -> np.ndarray:
    """Linearly interpolate a (3, *grid.shape) field at world points (3, N); zero outside the grid."""
    inv = np.linalg.inv(grid.affine)
    ijk = inv[:3, :3] @ world_points + inv[:3, 3:4]
    return np.stack([ndimage.map_coordinates(c, ijk, order=1, mode="nearest") for c in field])


def integrate_velocity(velocity: np.ndarray, grid: Grid, squarings: int = 6) -> np.ndarray:
    """exp(v) by scaling and squaring: d <- d/2^K, then K times d(x) <- d(x) + d(x + d(x))."""
    disp = velocity / (2 ** squarings)
    ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    world = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:4]
    for _ in range(squarings):
        disp = disp + sample_field(disp, grid, world + disp.reshape(3, -1)).reshape(disp.shape)
    return disp


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


def mask_attraction_field(mask: np.ndarray, affine: np.ndarray, sigma_mm: float, coarse: Grid) -> np.ndarray:
    """Unit-peak velocity pointing into `mask`: the gradient of its Gaussian-smoothed indicator.

    Flowing along +field pulls surrounding tissue into the structure (pull-back: it grows);
    along -field the structure shrinks.
    """
    spacing = spacing_of(affine)
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), sigma_mm / spacing)
    # gradient in world mm; the source grid is axis-aligned, so only the axis signs need care
    grads = np.gradient(smooth, *spacing)
    signs = np.sign(np.diag(affine[:3, :3]))
    field = np.stack([resample(g * s, affine, coarse, order=1) for g, s in zip(grads, signs)])
    peak = np.sqrt((field ** 2).sum(axis=0)).max()
    return (field / peak).astype(np.float32) if peak > 0 else field
