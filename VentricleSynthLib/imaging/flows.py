"""Smooth diffeomorphic flows: stationary velocity fields integrated by scaling and squaring, and the ventricle
attraction field that grows or shrinks a structure (tissue pulled in or pushed aside).

Displacements are world-space (mm) pull-back fields: a warped volume at x samples the source at x + d(x).
The template cohort (training) and exact-volume refinement (generation) both use them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.imaging.geometry import Grid, resample


def sample_field(field: np.ndarray, grid: Grid, world_points: np.ndarray) -> np.ndarray:
    """Linearly interpolate a (3, *grid.shape) field at world points (3, N); edge values outside the grid."""
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


def solve_strength(volume, target: float, lo: float, hi: float, tolerance: float, max_iterations: int,
                   first: float = 0.0, known: dict | None = None) -> tuple[float, float]:
    """(strength, volume): the flow strength in [lo, hi] whose `volume(strength)` (increasing) is `target`.

    Both ends are evaluated first (a target outside their volumes gets the nearer end), then `first`, then
    interpolation on log volume guarded towards bisection (a ventricle grows roughly exponentially with the
    strength), until within `tolerance`; the best iterate if the discrete volume never gets that close.
    `known`: volumes already measured ({strength: volume}), not measured again. The template cohort and
    exact-volume refinement both use it."""
    tried = dict(known or {})

    def at(s: float) -> float:
        if s not in tried:
            tried[s] = float(volume(s))
        return tried[s]

    v_lo, v_hi = at(lo), at(hi)
    if not v_lo <= target <= v_hi:
        return (lo, v_lo) if abs(v_lo - target) < abs(v_hi - target) else (hi, v_hi)
    strength, vol = first, at(first)
    for _ in range(max_iterations):
        if abs(vol - target) <= tolerance or hi - lo < 1e-3:
            return strength, vol
        if vol < target:
            lo, v_lo = strength, vol
        else:
            hi, v_hi = strength, vol
        span = np.log(max(v_hi, 1e-3)) - np.log(max(v_lo, 1e-3))
        t = (np.log(target) - np.log(max(v_lo, 1e-3))) / span if span > 0 else 0.5
        strength = lo + float(np.clip(t, 0.1, 0.9)) * (hi - lo)
        vol = at(strength)
    best = min(tried, key=lambda s: abs(tried[s] - target))
    return best, tried[best]
